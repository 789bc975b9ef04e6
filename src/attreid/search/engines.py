"""Making and opening a :class:`~attreid.search.gallery.Gallery` by engine name, so that the
commands and the tests drive every engine with the same code.

* ``faiss``: ``location`` is an index folder (FAISS + SQLite); ``name`` is unused.
* ``milvus``: ``location`` is a Milvus URI (a ``.db`` file: Milvus Lite; ``http://host:19530``:
  a server or cluster) and ``name`` the gallery's collection alias.

Where a command takes an index, the text says which (:func:`parse_location`):
``runs/index`` is a folder; ``http://milvus:19530#site`` the gallery ``site`` on a Milvus
server; ``galleries/site.db#site`` (or ``galleries/site.db``, name ``attreid``) Milvus Lite.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from attreid.schema import TASK_NAMES
from attreid.search.gallery import BACKENDS, Gallery, check_rows
from attreid.search.index import DATABASE, GalleryIndex, GalleryIndexError
from attreid.search.sources import _array_source

DEFAULT_NAME = "attreid"
"""The Milvus collection alias of a gallery when none is given."""


def parse_location(text: str) -> tuple[str, str, str]:
    """``(backend, location, name)`` of an index argument (see the module docstring): a URI
    with a scheme (``http``, ``https``, ``tcp``) or a path ending in ``.db`` is Milvus, its
    gallery name after ``#`` (default :data:`DEFAULT_NAME`); anything else an index folder."""
    location, _, name = text.partition("#")
    folder = Path(text)
    if (folder / DATABASE).is_file():  # an index folder, whatever its name
        return "faiss", text, DEFAULT_NAME
    if "://" in location or location.endswith(".db"):
        return "milvus", location, name or DEFAULT_NAME
    if "#" in text and not folder.exists():
        raise GalleryIndexError(f"{text}: '#' names a Milvus gallery, but {location} is "
                                "neither a Milvus Lite file (FILE.db) nor a URI "
                                "(http://HOST:19530); an index folder's name has no '#'")
    return "faiss", text, DEFAULT_NAME


def check_new_location(text: str, overwrite: bool = True) -> None:
    """Refuse, before any embedding, a gallery location that cannot be written: a Milvus Lite
    file in a missing folder, a name with '#' that names no engine, an existing index folder
    without ``overwrite``.

    Raises:
        GalleryIndexError: as above."""
    from attreid.search.build import refuse_existing
    from attreid.search.milvus_collections import _check_lite_path, is_lite

    backend, location, _ = parse_location(text)
    if backend == "milvus" and is_lite(location):
        _check_lite_path(location, create=True)
    if backend == "faiss":
        refuse_existing(Path(location), overwrite)


def open_location(text: str) -> Gallery:
    """The gallery an index argument names (:func:`parse_location`), opened."""
    return open_gallery(*parse_location(text))


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise GalleryIndexError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")


def open_gallery(backend: str, location: str | Path, name: str = DEFAULT_NAME) -> Gallery:
    """The gallery at ``location`` (see the module docstring).

    Raises:
        GalleryIndexError: unknown backend, no such gallery, or one that cannot be read.
    """
    _check_backend(backend)
    if backend == "faiss":
        return GalleryIndex.open(location)
    from attreid.search.milvus import MilvusGallery

    return MilvusGallery.open(str(location), name)


def create_gallery(backend: str, location: str | Path, paths: Sequence[str],
                   embeddings: np.ndarray, probabilities: dict[str, np.ndarray],
                   info: dict[str, Any], name: str = DEFAULT_NAME, kind: str = "flat",
                   overwrite: bool = False,
                   on_wait: Callable[[str], None] | None = None) -> Gallery:
    """A new gallery of N embedded crops: ``paths`` (N,), ``embeddings`` (N, D),
    ``probabilities`` task -> (N, C); ``info`` holds ``checkpoint``, ``checkpoint_sha256``,
    ``metric`` (``euclidean``/``cosine``) and optionally ``trained_tasks``; ``kind``: ``flat``
    or ``ivf`` (both engines), ``hnsw`` (Milvus).

    Raises:
        GalleryIndexError: unknown backend or kind, an existing gallery without ``overwrite``.
    """
    _check_backend(backend)
    if backend == "milvus":
        from attreid.search.milvus import MilvusGallery

        check_rows(paths, embeddings, probabilities)
        return MilvusGallery.create(str(location), name,
                                    _array_source(list(paths), embeddings, probabilities), info,
                                    kind=kind, overwrite=overwrite, on_wait=on_wait)
    from attreid.search.build import write_index

    if kind not in ("flat", "ivf"):
        raise GalleryIndexError(f"kind {kind!r}: the faiss backend has flat and ivf")
    return write_index(location, [Path(p) for p in paths], embeddings, probabilities,
                        checkpoint=Path(info["checkpoint"]), metric=info.get("metric", "euclidean"),
                        kind=kind, overwrite=overwrite,
                        checkpoint_sha256=info.get("checkpoint_sha256"),
                        trained_tasks=info.get("trained_tasks"), on_wait=on_wait)


def build_gallery(predictor: Any, images: Path | str, location: str, kind: str = "flat",
                  overwrite: bool = False, batch_size: int = 64, progress: Any = None,
                  on_wait: Callable[[str], None] | None = None, embed: Any = None,
                  **faiss_options: Any) -> Gallery:
    """Embed every crop under ``images`` with ``predictor`` and write the gallery ``location``
    names (:func:`parse_location`): an index folder (:func:`~attreid.search.build.build_index`,
    ``faiss_options``: nlist, nprobe, features, shard_size) or a Milvus gallery (the crops
    embedded into a scratch feature store, then written a chunk at a time; nlist and nprobe
    set its IVF_FLAT index). ``embed``: how the crops are embedded
    (:data:`~attreid.search.build.Embed`; default: with ``predictor`` in this process).

    Raises:
        GalleryIndexError: the gallery exists (without ``overwrite``), no image decoded, or
            the engine refused; DataError: the image folder is missing or empty.
    """
    from attreid.search.build import build_index, list_gallery, local_embed

    backend, uri, name = parse_location(location)
    if backend == "faiss":
        return build_index(predictor, images, uri, kind=kind, overwrite=overwrite,
                           batch_size=batch_size, progress=progress, on_wait=on_wait,
                           embed=embed, **faiss_options)
    paths = list_gallery(images)  # a missing or empty folder: refused before Milvus is touched
    ivf = {k: v for k, v in faiss_options.items() if k in ("nlist", "nprobe")}
    embed = embed or local_embed(predictor, batch_size)
    return _build_milvus(predictor, images, paths, uri, name, kind, overwrite, embed,
                         progress, on_wait, **ivf)


def _build_milvus(predictor: Any, images: Path | str, paths: list[Path], uri: str, name: str,
                  kind: str, overwrite: bool, embed: Any, progress: Any,
                  on_wait: Callable[[str], None] | None, **ivf: int) -> Gallery:
    """:func:`build_gallery` on Milvus (``ivf``: nlist, nprobe of an ``ivf`` kind). A new
    Milvus Lite path that fails to build is removed again (nothing of a failed command is left
    behind)."""
    from attreid.search.build import _warn_skipped
    from attreid.search.milvus import MilvusGallery
    from attreid.search.milvus_collections import alias_target, check_name, connect, is_lite
    from attreid.search.sources import _store_source
    from attreid.zoo import resolve_checkpoint

    check_name(name)
    fresh = is_lite(uri) and not Path(uri).exists()
    client = connect(uri, create=True)
    try:
        if alias_target(client, name) is not None and not overwrite:  # before embedding
            raise GalleryIndexError(f"{uri}#{name}: the gallery exists; pass --overwrite to "
                                    "replace it")
        checkpoint = resolve_checkpoint(Path(predictor.checkpoint))
        info = {"checkpoint": str(checkpoint.resolve()), "metric": predictor.distance,
                "checkpoint_sha256": predictor.checkpoint_sha256,
                "flip": bool(predictor.flip), "images_root": str(Path(images).resolve()),
                "trained_tasks": list(getattr(predictor, "trained_tasks", TASK_NAMES))}
        with tempfile.TemporaryDirectory(prefix="attreid-milvus-") as scratch:
            store, skipped = embed(paths, Path(scratch) / "store", progress=progress)
            _warn_skipped(skipped)
            if not len(store):
                raise GalleryIndexError(f"{images}: none of the {len(paths)} images decoded")
            return MilvusGallery.create(uri, name, _store_source(store), info, kind=kind,
                                        overwrite=overwrite, client=client, on_wait=on_wait,
                                        **ivf)
    except BaseException:
        if fresh:
            _remove_lite(client, uri)
        raise


def _remove_lite(client: Any, uri: str) -> None:
    """Close ``client`` and delete the Milvus Lite folder ``uri`` this command made."""
    import shutil

    from attreid.search.milvus_collections import release_lite

    client.close()
    release_lite(uri)
    shutil.rmtree(uri, ignore_errors=True)


def add_crops(gallery: Gallery, predictor: Any, images: Path | str, batch_size: int = 64,
              progress: Any = None, on_wait: Callable[[str], None] | None = None
              ) -> tuple[int, int, list[str]]:
    """Embed the crops under ``images`` that ``gallery`` lacks and add them (no rebuild):
    :func:`~attreid.search.build.add_images` on an index folder; on Milvus the new crops go
    through a scratch feature store, then one atomic add.

    Returns:
        (added, already indexed, skipped undecodable files).

    Raises:
        GalleryIndexError: ``predictor``'s checkpoint did not make the gallery.
    """
    from attreid.search.build import _warn_skipped, add_images, embed_files_to_store
    from attreid.search.build import list_gallery

    if isinstance(gallery, GalleryIndex):
        return add_images(gallery, predictor, images, batch_size, progress, on_wait)
    from attreid.search.sources import _store_source

    gallery.check_checkpoint(predictor.checkpoint, predictor.checkpoint_sha256)
    paths = list_gallery(images)
    known = set(gallery.paths_indexed([str(p) for p in paths]))  # type: ignore[attr-defined]
    new = [p for p in paths if str(p) not in known]
    if not new:
        return 0, len(paths), []
    with tempfile.TemporaryDirectory(prefix="attreid-milvus-") as scratch:
        store, skipped = embed_files_to_store(predictor, new, Path(scratch) / "store",
                                              batch_size, progress=progress)
        _warn_skipped(skipped)
        add = gallery.add_source  # type: ignore[attr-defined]
        added = add(_store_source(store), on_wait) if len(store) else 0
    return added, len(known), skipped
