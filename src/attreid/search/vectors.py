"""The FAISS side of an index: the ``faiss`` import (the ``search`` extra), the index kinds
(exact ``flat`` or inverted lists ``ivf``), vectors as FAISS takes them and its scores as
attreid distances.
"""

from __future__ import annotations

from typing import Any

import numpy as np

INDEX_KINDS = ("flat", "ivf")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # optional dependency: the search extra
        raise ImportError("gallery search needs faiss: pip install 'attreid[search]' "
                          "(or pip install faiss-cpu)") from exc
    return faiss


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
