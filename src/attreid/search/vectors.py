"""The FAISS side of an index: the ``faiss`` import (the ``search`` extra), the index kinds
(exact ``flat`` or inverted lists ``ivf``), vectors as FAISS takes them and its scores as
attreid distances.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attreid.utils.extras import require_extra

INDEX_KINDS = ("flat", "ivf")


def _faiss() -> Any:
    return require_extra("faiss", "gallery search", "search", "or pip install faiss-cpu")


def _new_faiss_index(dim: int, metric: str, kind: str, nlist: int) -> Any:
    faiss = _faiss()
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    flat = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    if kind == "flat":
        return flat
    return faiss.IndexIVFFlat(flat, dim, nlist, faiss_metric)


def prepare_vectors(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float32, C-contiguous; unit length for the cosine metric (FAISS inner product)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def faiss_to_distance(scores: np.ndarray, metric: str) -> np.ndarray:
    """FAISS scores -> attreid distances (Euclidean: sqrt of squared L2; cosine: 1 - cos)."""
    if metric == "cosine":
        return 1.0 - scores
    return np.sqrt(np.maximum(scores, 0.0))


EXACT_ROWS = 20_000
"""A filter allowing at most this many crops is searched exactly (brute force over them, as
Milvus's server does under selective filters): an approximate index (IVF, HNSW) may miss some
of a few allowed crops, or rank them out of order."""


def exact_distances(q: np.ndarray, x: np.ndarray, metric: str) -> np.ndarray:
    """(Q, N) float64 distances of prepared queries ``q`` (Q, D) to prepared vectors ``x``
    (N, D): Euclidean, or 1 - cos for the cosine metric (both unit length then)."""
    q64, x64 = np.asarray(q, np.float64), np.asarray(x, np.float64)
    if metric == "cosine":
        return 1.0 - q64 @ x64.T
    squared = (q64 ** 2).sum(1)[:, None] + (x64 ** 2).sum(1)[None] - 2.0 * q64 @ x64.T
    return np.sqrt(np.maximum(squared, 0.0))


def nearest(distances: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` smallest of each row of ``distances`` (Q, N) with their ``ids`` (N,) or
    (Q, N), ties by id: (Q, k) float64 distances and int64 ids."""
    ids = np.broadcast_to(np.asarray(ids, np.int64), distances.shape)
    order = np.lexsort((ids, distances), axis=1)[:, :k]
    return np.take_along_axis(distances, order, 1), np.take_along_axis(ids, order, 1)


def exact_search(vectors: Any, q: np.ndarray, k: int, allowed: np.ndarray, metric: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over the ``allowed`` ids of FAISS ``vectors`` (read back with
    ``reconstruct_batch``): (Q, k) float32 distances and int64 ids, ties by id; a slot with no
    allowed id left (an id not in the index) has id -1 and distance inf."""
    ids = np.unique(np.asarray(allowed, np.int64))
    ids = ids[(ids >= 0) & (ids < vectors.ntotal)]
    x = vectors.reconstruct_batch(ids) if len(ids) else np.zeros((0, vectors.d), np.float32)
    d, i = nearest(exact_distances(q, x, metric), ids, k)
    short = k - d.shape[1]
    if short > 0:
        d = np.pad(d, ((0, 0), (0, short)), constant_values=np.inf)
        i = np.pad(i, ((0, 0), (0, short)), constant_values=-1)
    return d.astype(np.float32), i
