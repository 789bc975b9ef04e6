"""Rows to index, as both the writer of a new index (:mod:`attreid.search.build`) and
:meth:`attreid.search.index.GalleryIndex.append_store` take them: from arrays, or from a feature
store read :data:`~attreid.search.index.WRITE_CHUNK` rows at a time, optionally without the
crops an index already holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from attreid.inference.features import EMBEDDINGS, PROBABILITIES, FeatureStore, FeatureStoreError
from attreid.search.metadata import _probability_rows
from attreid.search.storage import GalleryIndexError

WRITE_CHUNK = 16_384
"""Vectors added to FAISS, and rows inserted into SQLite, at a time when writing an index."""

RowsHook = Callable[[Any, int], "dict[str, Any] | None"]
"""``(sqlite3 connection, id of the first new row) -> more info entries``: run inside the
transaction that adds rows (:meth:`attreid.search.index.GalleryIndex.append_arrays`)."""


@dataclass(frozen=True)
class _Source:
    """Rows to index: how many, their dimension, chunks of (paths, embeddings (b, D),
    probabilities (b, P)) in order, and a gather of embedding rows (K,) -> (K, D)."""

    count: int
    dim: int
    chunks: Callable[[], Iterator[tuple[Sequence[Any], np.ndarray, np.ndarray]]]
    take: Callable[[np.ndarray], np.ndarray]


def _array_source(paths: Sequence[Path], embeddings: np.ndarray,
                  probabilities: dict[str, np.ndarray]) -> _Source:
    x = np.asarray(embeddings)
    if x.ndim != 2 or len(x) != len(paths):
        raise GalleryIndexError(f"embeddings: expected ({len(paths)}, D) for {len(paths)} "
                                f"paths, got {x.shape}")
    probs = _probability_rows(probabilities)  # (N, P)

    def chunks() -> Iterator[tuple[Sequence[Any], np.ndarray, np.ndarray]]:
        for lo in range(0, len(x), WRITE_CHUNK):
            hi = lo + WRITE_CHUNK
            yield paths[lo:hi], x[lo:hi], probs[lo:hi]

    return _Source(len(x), x.shape[1], chunks, lambda rows: x[rows])


def _store_source(store: FeatureStore) -> _Source:
    if not store.has_paths or PROBABILITIES not in store.fields:
        raise FeatureStoreError(f"{store.root}: an index needs the paths and probabilities "
                                "of the crops; this store lacks them")

    def chunks() -> Iterator[tuple[Sequence[Any], np.ndarray, np.ndarray]]:
        for chunk in store.chunks([EMBEDDINGS, PROBABILITIES], WRITE_CHUNK, paths=True):
            yield (chunk.paths or [], np.array(chunk.arrays[EMBEDDINGS]),
                   np.array(chunk.arrays[PROBABILITIES]))

    return _Source(len(store), store.dim, chunks, lambda rows: store.take(EMBEDDINGS, rows))


def _without(source: "_Source", store: FeatureStore, known: set[str]) -> "_Source":
    """The rows of ``source`` (read from ``store``) whose path is not in ``known``."""
    keep = np.array([p not in known for c in store.chunks([], paths=True)
                     for p in (c.paths or [])], dtype=bool)
    if keep.all():
        return source
    rows = np.flatnonzero(keep)

    def chunks() -> Iterator[tuple[Sequence[Any], np.ndarray, np.ndarray]]:
        start = 0
        for paths, embeddings, probabilities in source.chunks():
            mask = keep[start:start + len(paths)]
            start += len(paths)
            if mask.any():
                yield ([p for p, k in zip(paths, mask) if k], embeddings[mask],
                       probabilities[mask])

    return _Source(len(rows), source.dim, chunks, lambda sel: source.take(rows[sel]))
