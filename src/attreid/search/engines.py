"""Making and opening a :class:`~attreid.search.gallery.Gallery` by engine name, so that the
commands and the tests drive every engine with the same code.

* ``faiss``: ``location`` is an index folder (FAISS + SQLite); ``name`` is unused.
* ``milvus``: ``location`` is a Milvus URI (a file path: Milvus Lite; ``http://host:19530``:
  a server or cluster) and ``name`` the gallery's collection alias.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from attreid.search.gallery import BACKENDS, FaissGallery, Gallery
from attreid.search.index import GalleryIndexError

DEFAULT_NAME = "attreid"
"""The Milvus collection alias of a gallery when none is given."""


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
        return FaissGallery.open(location)
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

        return MilvusGallery.create(str(location), name, paths, embeddings, probabilities,
                                    info, kind=kind, overwrite=overwrite, on_wait=on_wait)
    from attreid.search.build import write_index

    if kind not in ("flat", "ivf"):
        raise GalleryIndexError(f"kind {kind!r}: the faiss backend has flat and ivf")
    index = write_index(location, [Path(p) for p in paths], embeddings, probabilities,
                        checkpoint=Path(info["checkpoint"]), metric=info.get("metric", "euclidean"),
                        kind=kind, overwrite=overwrite,
                        checkpoint_sha256=info.get("checkpoint_sha256"),
                        trained_tasks=info.get("trained_tasks"), on_wait=on_wait)
    return FaissGallery(index)
