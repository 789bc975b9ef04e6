"""Writing an index: embedding a folder of crops (in memory, or streamed to a feature store),
writing a new index folder from arrays or from a feature store (an IVF quantizer trains on a
bounded sample), and adding the new crops of a folder to an existing index.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from attreid.data.io import IMAGE_SUFFIXES, find_images, read_image
from attreid.data.records import DataError
from attreid.inference.features import (
    DEFAULT_SHARD_SIZE,
    FeatureStore,
    ImageBatch,
    extract_to_store,
)
from attreid.schema import TASK_NAMES, TASKS, trained_tasks_of
from attreid.search.index import (
    DATABASE,
    FORMAT_VERSION,
    GalleryIndex,
    GalleryIndexError,
)
from attreid.search.metadata import _create_schema, _insert, _rows, _set_info
from attreid.search.sources import _array_source, _Source, _store_source
from attreid.search.storage import (
    disk_full,
    remove_scratch,
    space_needed,
    write_vectors,
    writer_lock,
)
from attreid.search.vectors import INDEX_KINDS, _new_faiss_index, prepare_vectors
from attreid.utils.files import (
    file_sha256,
    locked_temp_folder,
    make_temp_folder,
    printable_name,
)
from attreid.zoo import resolve_checkpoint

IVF_SAMPLE_PER_LIST = 256
"""The IVF quantizer trains on a seeded random sample of at most this many vectors per list,"""
IVF_SAMPLE_MAX = 65_536
"""and of at most this many in all (but never fewer than :data:`IVF_SAMPLE_MIN_PER_LIST` per
list), so that training memory and time stay bounded however large the gallery."""
IVF_SAMPLE_MIN_PER_LIST = 40

Progress = Callable[[int, int], None]
"""Callback ``(done, total)`` for long work."""
Notice = Callable[[str], None]
"""Callback for a message while waiting (another process is writing the index)."""


def list_gallery(folder: Path | str) -> list[Path]:
    """Image files under ``folder`` (recursive, links to folders and files followed; sorted real
    paths, each file once: see :func:`attreid.data.io.find_images`). Paths that repeat a file,
    folders reached twice, broken links and unreadable folders give one warning with counts.

    Raises:
        DataError: the folder is missing, not a folder, or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found" if not folder.exists()
                        else f"{folder}: expected a folder of images, found a file")
    found = find_images(folder)
    problems = found.problems()
    if problems:
        warnings.warn(f"{folder}: {problems}", stacklevel=2)
    if not found.paths:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return found.paths


# --------------------------------------------------------------------------------------------
# Embedding a folder
# --------------------------------------------------------------------------------------------



@dataclass
class Embedded:
    """Crops that decoded, their outputs, and the files that did not decode."""

    paths: list[Path]
    embeddings: np.ndarray  # (N, D)
    probabilities: dict[str, np.ndarray]  # task -> (N, C)
    skipped: list[str]  # "path: reason"


def _decoded(paths: Sequence[Path], skipped: list[str]) -> Iterator[tuple[Path, Any]]:
    for path in paths:
        try:
            yield path, read_image(path)
        except DataError as exc:
            skipped.append(str(exc))


def embed_files(predictor: Any, paths: Sequence[Path], batch_size: int = 64,
                progress: Progress | None = None) -> Embedded:
    """Embed ``paths`` with a :class:`~attreid.Predictor` in batches; undecodable files are
    skipped (and listed), never fatal."""
    skipped: list[str] = []
    kept: list[Path] = []
    embeddings, probabilities = [], {t.name: [] for t in TASKS}
    batch: list[tuple[Path, Any]] = []

    def flush() -> None:
        result = predictor.predict([img for _, img in batch])
        kept.extend(p for p, _ in batch)
        embeddings.append(result.embeddings)
        for task in TASKS:
            probabilities[task.name].append(result.probabilities[task.name])
        batch.clear()

    for item in _decoded(paths, skipped):
        batch.append(item)
        if len(batch) == batch_size:
            flush()
        if progress:
            progress(len(kept) + len(batch) + len(skipped), len(paths))
    if batch:
        flush()
    if progress:
        progress(len(paths), len(paths))
    dim = int(predictor.embedding_dim)
    return Embedded(
        paths=kept,
        embeddings=np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32),
        probabilities={k: (np.concatenate(v) if v else np.zeros((0, len(t.classes))))
                       for (k, v), t in zip(probabilities.items(), TASKS)},
        skipped=skipped,
    )


def _warn_skipped(skipped: list[str]) -> None:
    if skipped:
        shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5
                                          else "")
        warnings.warn(f"skipped {len(skipped)} undecodable image(s): "
                      f"{printable_name(shown)}", stacklevel=3)


# --------------------------------------------------------------------------------------------
# Writing an index
# --------------------------------------------------------------------------------------------


def ivf_sample_size(count: int, nlist: int) -> int:
    """Training vectors of an IVF index with ``nlist`` lists over ``count`` vectors:
    ``min(count, max(40 nlist, min(256 nlist, 65,536)))``."""
    cap = max(IVF_SAMPLE_MIN_PER_LIST * nlist, min(IVF_SAMPLE_PER_LIST * nlist, IVF_SAMPLE_MAX))
    return min(count, cap)


def _train_ivf(vectors: Any, source: "_Source", nlist: int, metric: str, seed: int = 0) -> None:
    """Train the IVF quantizer on a seeded sample of the source (see :func:`ivf_sample_size`)."""
    if source.count < nlist:
        raise GalleryIndexError(f"IVF with {nlist} lists needs at least {nlist} images to "
                                f"train on, the gallery has {source.count}; use fewer lists "
                                f"(`--ivf N` with N <= {source.count}, or -1 to choose) or the "
                                "exact index (leave out --ivf)")
    size = ivf_sample_size(source.count, nlist)
    rows = np.arange(size) if size == source.count else \
        np.random.default_rng(seed).choice(source.count, size, replace=False)
    vectors.train(prepare_vectors(source.take(rows), metric))  # (size, D)


def refuse_existing(out: Path, overwrite: bool) -> None:
    """Raise :class:`GalleryIndexError` when the index folder ``out`` exists and ``overwrite``
    is off."""
    if out.exists() and not overwrite:
        raise GalleryIndexError(f"{out}: already exists; pass --overwrite to replace it or "
                                "`attreid index add` to extend it")


def _check_target(out: Path, kind: str, overwrite: bool) -> None:
    if kind not in INDEX_KINDS:
        raise GalleryIndexError(f"index kind {kind!r}: expected one of {INDEX_KINDS}")
    refuse_existing(out, overwrite)


def build_index(predictor: Any, images: Path | str, out: Path | str, kind: str = "flat",
                nlist: int = 0, nprobe: int = 16, batch_size: int = 64, overwrite: bool = False,
                progress: Progress | None = None, features: Path | str | None = None,
                shard_size: int = DEFAULT_SHARD_SIZE, on_wait: Notice | None = None,
                embed: Embed | None = None) -> GalleryIndex:
    """Embed every crop under ``images`` and write a new index folder ``out``.

    The crops are embedded batch by batch into a feature store (:mod:`attreid.inference.features`),
    then the index is written from it chunk by chunk: memory holds one batch, one shard and
    the FAISS vectors, not every embedding and probability twice over.

    Args:
        predictor: an :class:`~attreid.Predictor` (its checkpoint and its
            ``trained_tasks`` are recorded).
        kind: ``"flat"`` (exact search) or ``"ivf"`` (inverted lists; for large galleries;
            trained on a sample, see :func:`ivf_sample_size`).
        nlist: IVF lists (0: about 4 * sqrt(N)); nprobe: lists visited per query.
        overwrite: replace an existing ``out``.
        features: keep the feature store in this new folder (default: a temporary one,
            removed); shard_size: its rows per shard.
        on_wait: gets a message when ``overwrite`` waits for another process writing ``out``.
        embed: how the crops are embedded into the feature store (:data:`Embed`; default
            :func:`embed_files_to_store` with ``predictor`` in this process; a Ray cluster:
            :func:`attreid.cluster.ray_embedder`).

    Scratch folders that killed builds and adds of ``out`` left beside it are removed first.
    The folder gets the mode of a new folder under the umask.

    Raises:
        GalleryIndexError: ``out`` exists (without ``overwrite``), bad IVF settings, or no
            image decoded; :class:`~attreid.search.storage.IndexDiskFullError` when the disk
            fills up (nothing is left behind, an existing ``out`` is unchanged).
        DataError: the image folder is missing or empty.
    """
    out = Path(out)
    _check_target(out, kind, overwrite)  # before the embedding, which takes long
    paths = list_gallery(images)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_scratch(out)
    count, dim = len(paths), int(getattr(predictor, "embedding_dim", 0))
    with disk_full(out, space_needed(count, count, dim, store_rows=count), _unchanged(out)), \
            _store_folder(out, features) as store_dir:
        store, skipped = (embed or local_embed(predictor, batch_size))(
            paths, store_dir, shard_size=shard_size, progress=progress,
            overwrite=features is None)
        _warn_skipped(skipped)
        if not len(store):
            raise GalleryIndexError(f"{images}: none of the {len(paths)} images decoded")
        return write_index_from_store(
            out, store, checkpoint=Path(predictor.checkpoint), metric=predictor.distance,
            checkpoint_sha256=predictor.checkpoint_sha256, kind=kind, nlist=nlist,
            nprobe=nprobe, overwrite=overwrite,
            extra={"flip": bool(predictor.flip), "images_root": str(Path(images).resolve())},
            trained_tasks=getattr(predictor, "trained_tasks", TASK_NAMES), on_wait=on_wait)


def _unchanged(out: Path) -> str:
    return f"the index {out} is unchanged" if out.exists() else "no index was written"


@contextmanager
def _store_folder(out: Path, features: Path | str | None) -> Iterator[Path]:
    """The feature store's folder: ``features``, or a locked scratch folder beside ``out``
    (removed after the block; one of a killed build is removed by the next build or add)."""
    if features is not None:
        yield Path(features)
        return
    with locked_temp_folder(out.parent, f".{out.name}.features.") as scratch:
        yield scratch / "store"


Embed = Callable[..., tuple[FeatureStore, list[str]]]
"""``embed(paths, out, shard_size=, progress=, overwrite=)`` -> (feature store ``out`` of the
crops that decoded, in the order of ``paths``; skipped files as "path: reason")."""


def local_embed(predictor: Any, batch_size: int = 64) -> Embed:
    """The :data:`Embed` of this process: :func:`embed_files_to_store` with ``predictor``."""
    def embed(paths: Sequence[Path], out: Path | str, shard_size: int = DEFAULT_SHARD_SIZE,
              progress: Progress | None = None,
              overwrite: bool = False) -> tuple[FeatureStore, list[str]]:
        return embed_files_to_store(predictor, paths, out, batch_size, shard_size, progress,
                                    overwrite=overwrite)

    return embed


def embed_files_to_store(predictor: Any, paths: Sequence[Path], out: Path | str,
                         batch_size: int = 64, shard_size: int = DEFAULT_SHARD_SIZE,
                         progress: Progress | None = None,
                         overwrite: bool = False) -> tuple[FeatureStore, list[str]]:
    """:func:`embed_files`, streamed to a feature store ``out`` (see
    :mod:`attreid.inference.features`) instead of held in memory: embeddings, probabilities and
    paths of the crops that decoded.

    Returns:
        (the store, skipped undecodable files as "path: reason").
    """
    skipped: list[str] = []

    def batches() -> Iterator[ImageBatch]:
        batch: list[tuple[Path, Any]] = []
        for item in _decoded(paths, skipped):
            batch.append(item)
            if len(batch) == batch_size:
                yield ImageBatch([img for _, img in batch], [str(p) for p, _ in batch])
                batch = []
        if batch:
            yield ImageBatch([img for _, img in batch], [str(p) for p, _ in batch])

    def report(done: int) -> None:
        if progress:
            progress(done + len(skipped), len(paths))

    store = extract_to_store(predictor, batches(), out, shard_size, overwrite=overwrite,
                             info={"flip": bool(predictor.flip),
                                   "checkpoint_sha256": predictor.checkpoint_sha256},
                             progress=report)
    if progress:
        progress(len(paths), len(paths))
    return store, skipped


def write_index(out: Path | str, paths: Sequence[Path], embeddings: np.ndarray,
                probabilities: dict[str, np.ndarray], checkpoint: Path, metric: str = "euclidean",
                kind: str = "flat", nlist: int = 0, nprobe: int = 16, overwrite: bool = False,
                extra: dict[str, Any] | None = None,
                checkpoint_sha256: str | None = None,
                trained_tasks: Sequence[str] | None = None,
                on_wait: Notice | None = None) -> GalleryIndex:
    """Write an index folder from embeddings already computed (by ``checkpoint``).

    Args:
        paths: N crop files; embeddings: (N, D); probabilities: task -> (N, C).
        metric: ``"euclidean"`` or ``"cosine"`` (the checkpoint's training distance).
        kind, nlist, nprobe, overwrite: as in :func:`build_index`.
        extra: more ``info`` entries (flip, images_root).
        checkpoint_sha256: the checkpoint's sha256 (default: hash ``checkpoint``; an ONNX
            export gives its source checkpoint's).
        trained_tasks: the tasks the model was trained on (``Predictor.trained_tasks``;
            ``None``: all); only those can be searched by and are described.
    """
    return _write_index(out, _array_source(paths, embeddings, probabilities), checkpoint,
                        metric, kind, nlist, nprobe, overwrite, extra, checkpoint_sha256,
                        trained_tasks, on_wait)


def write_index_from_store(out: Path | str, store: FeatureStore, checkpoint: Path,
                           metric: str = "euclidean", kind: str = "flat", nlist: int = 0,
                           nprobe: int = 16, overwrite: bool = False,
                           extra: dict[str, Any] | None = None,
                           checkpoint_sha256: str | None = None,
                           trained_tasks: Sequence[str] | None = None,
                           on_wait: Notice | None = None) -> GalleryIndex:
    """:func:`write_index` from a feature store with paths and probabilities (as made by
    :func:`embed_files_to_store`), read chunk by chunk: vectors are added to FAISS and rows
    inserted into SQLite :data:`WRITE_CHUNK` at a time, an IVF quantizer trains on a sample
    (:func:`ivf_sample_size`). Memory: the FAISS vectors plus a chunk (plus the sample).
    Gives the same index as :func:`write_index` on the store's arrays.
    """
    return _write_index(out, _store_source(store), checkpoint, metric, kind, nlist, nprobe,
                        overwrite, extra, checkpoint_sha256, trained_tasks, on_wait)


def _write_index(out: Path | str, source: _Source, checkpoint: Path, metric: str, kind: str,
                 nlist: int, nprobe: int, overwrite: bool, extra: dict[str, Any] | None,
                 checkpoint_sha256: str | None,
                 trained_tasks: Sequence[str] | None = None,
                 on_wait: Notice | None = None) -> GalleryIndex:
    out = Path(out)
    _check_target(out, kind, overwrite)
    if trained_tasks is not None:
        extra = {**(extra or {}), "trained_tasks": list(trained_tasks_of(list(trained_tasks)))}
    nlist = nlist or max(1, min(source.count, int(4 * np.sqrt(source.count))))
    checkpoint = resolve_checkpoint(checkpoint)  # a shipped model's name -> its file
    info = {"format": FORMAT_VERSION, "checkpoint": str(checkpoint.resolve()),
            "checkpoint_sha256": checkpoint_sha256 or file_sha256(checkpoint),
            "metric": metric,
            "dim": int(source.dim), "kind": kind, "nlist": nlist if kind == "ivf" else 0,
            "nprobe": nprobe, "flip": False, "images_root": None,
            "vectors": "vectors-0.faiss", "generation": 0, **(extra or {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    needed = space_needed(source.count, source.count, source.dim)
    # the temporary folder holds the writer lock from birth: renamed into place, it is the
    # new index's, held until the block ends
    with disk_full(out, needed, _unchanged(out)), \
            locked_temp_folder(out.parent, f".{out.name}.") as tmp:
        _write_folder(tmp, source, info, nlist)
        _install(tmp, out, overwrite, on_wait)
    return GalleryIndex.open(out)


def _write_folder(folder: Path, source: _Source, info: dict[str, Any], nlist: int) -> None:
    """``meta.sqlite`` and the vectors file of a new index in ``folder``."""
    metric, kind = info["metric"], info["kind"]
    vectors = _new_faiss_index(source.dim, metric, kind, nlist)
    if kind == "ivf":
        _train_ivf(vectors, source, nlist, metric)
    db = sqlite3.connect(folder / DATABASE)
    try:
        with db:
            _create_schema(db)
            start = 0
            for paths, embeddings, probabilities in source.chunks():
                vectors.add(prepare_vectors(embeddings, metric))
                _insert(db, _rows(paths, probabilities, start))
                start += len(paths)
            _set_info(db, info)
    finally:
        db.close()
    write_vectors(vectors, folder / info["vectors"])


def _install(tmp: Path, out: Path, overwrite: bool, on_wait: Notice | None) -> None:
    """Rename the finished folder ``tmp`` to ``out``. An existing index ``out`` (overwrite) is
    replaced under its writer lock: an add at work there finishes first (and one waiting
    then finds the new index)."""
    try:
        os.rename(tmp, out)  # atomic; fails on a folder that is not empty
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not out.is_dir():
            raise
    if not overwrite:
        raise GalleryIndexError(f"{out}: made by another process while this build ran; pass "
                                "overwrite (--overwrite) to replace it")
    with writer_lock(out, on_wait):
        old = make_temp_folder(out.parent, f".{out.name}.old.")
        os.rename(out, old)
        os.rename(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def add_images(index: GalleryIndex, predictor: Any, images: Path | str, batch_size: int = 64,
               progress: Progress | None = None,
               on_wait: Notice | None = None) -> tuple[int, int, list[str]]:
    """Embed the crops under ``images`` not yet in ``index`` and append them (no rebuild).

    The crops are embedded first (into a scratch feature store beside the index, locked while
    in use; one left by a killed add is removed by the next add), then appended under the
    index's writer lock (:meth:`GalleryIndex.append_store`: another add at work finishes
    first, ``on_wait`` is told so once; crops it added meanwhile are not added twice).

    Returns:
        (added, already indexed, skipped undecodable files).

    Raises:
        GalleryIndexError: ``predictor``'s checkpoint did not make the index;
            :class:`~attreid.search.storage.IndexDiskFullError` when the disk fills up (the
            index is unchanged).
    """
    index.check_checkpoint(predictor.checkpoint, predictor.checkpoint_sha256)
    known = index.indexed_paths()  # a first guess, checked again under the writer lock
    paths = list_gallery(images)
    new = [p for p in paths if str(p) not in known]
    if not new:
        return 0, len(paths), []
    remove_scratch(index.root)
    needed = space_needed(len(new), len(index) + len(new), int(index.info["dim"]),
                          store_rows=len(new))
    with disk_full(index.root, needed, "the index is unchanged"), \
            locked_temp_folder(index.root.parent, f".{index.root.name}.add.") as scratch:
        # streamed through a scratch feature store: memory bounded whatever the number of crops
        store, skipped = embed_files_to_store(predictor, new, scratch / "store", batch_size,
                                              progress=progress)
        _warn_skipped(skipped)
        added = index.append_store(store, on_wait) if len(store) else 0
    indexed = index.indexed_paths()
    return added, sum(str(p) in indexed for p in paths) - added, skipped
