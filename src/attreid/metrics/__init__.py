"""Evaluation metrics: person re-identification ranking and attribute recognition.

Every public function is pure (no logging, no global state) and returns a fixed type. Inputs may
be numpy arrays or torch tensors; results are plain Python floats / numpy arrays.

Re-identification (:func:`reid_metrics`)
    CMC, mAP and mINP of a query x gallery distance matrix under two protocols:

    * ``"market"`` — the standard Market-1501 protocol: for each query, gallery images of the
      same identity *and* the same camera are removed, and junk images (id ``-1``) are removed.
      Distractors (id ``0``) stay and count as wrong matches (they are just another identity).
    * ``"seed"`` — the study's protocol: every query is ranked against the whole gallery, no
      camera filter, no junk handling; with ``exclude_self=True`` query and gallery are the same
      set and each query's own entry (the diagonal) is removed.

    :func:`reid_metrics_streamed` gives the same from query features and a gallery read block
    by block (a memory-mapped feature store), never holding the Q x G matrix.

Attribute recognition (:func:`attribute_metrics`, :func:`majority_baseline`)
    Per-task accuracy on the 12 tasks of :mod:`attreid.schema` (``MISSING`` targets ignored),
    majority-class baselines, and the PETA/RAP metrics (label-based mA, example-based accuracy,
    precision, recall, F1) on the 26 raw binary attributes.

Modules: ``distance``, ``reid``, ``attributes``, ``reranking`` (k-reciprocal, Zhong et al. 2017),
``selection`` (best checkpoint), ``inputs`` (array checks). May import: the bottom layer
(``errors``, ``schema``, ``config``, ``utils``) only; pure functions, no model, no data reader.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the real imports, for readers and type checkers
    from attreid.metrics.attributes import (
        BINARY_RAW_ATTRIBUTES,
        AttributeResult,
        MajorityGap,
        attribute_metrics,
        majority_baseline,
        majority_classes,
        majority_gaps,
        predict_labels,
    )
    from attreid.metrics.distance import DISTANCE_METRICS, pairwise_distance
    from attreid.metrics.inputs import ArrayLike
    from attreid.metrics.reid import (
        JUNK_ID,
        PROTOCOLS,
        GalleryBlock,
        ReidResult,
        reid_metrics,
        reid_metrics_streamed,
    )
    from attreid.metrics.reranking import rerank, rerank_dense
    from attreid.metrics.selection import selection_score

_EXPORTS = {
    'BINARY_RAW_ATTRIBUTES': 'attreid.metrics.attributes',
    'AttributeResult': 'attreid.metrics.attributes',
    'MajorityGap': 'attreid.metrics.attributes',
    'attribute_metrics': 'attreid.metrics.attributes',
    'majority_baseline': 'attreid.metrics.attributes',
    'majority_classes': 'attreid.metrics.attributes',
    'majority_gaps': 'attreid.metrics.attributes',
    'predict_labels': 'attreid.metrics.attributes',
    'DISTANCE_METRICS': 'attreid.metrics.distance',
    'pairwise_distance': 'attreid.metrics.distance',
    'ArrayLike': 'attreid.metrics.inputs',
    'JUNK_ID': 'attreid.metrics.reid',
    'PROTOCOLS': 'attreid.metrics.reid',
    'GalleryBlock': 'attreid.metrics.reid',
    'ReidResult': 'attreid.metrics.reid',
    'reid_metrics': 'attreid.metrics.reid',
    'reid_metrics_streamed': 'attreid.metrics.reid',
    'rerank': 'attreid.metrics.reranking',
    'rerank_dense': 'attreid.metrics.reranking',
    'selection_score': 'attreid.metrics.selection',
}
"""Public name -> its module: imported on first use (PEP 562), so that importing one
module of ``attreid.metrics`` does not import them all (torch for a description search)."""

__all__ = [
    "BINARY_RAW_ATTRIBUTES", "DISTANCE_METRICS", "JUNK_ID", "PROTOCOLS", "ArrayLike",
    "AttributeResult", "GalleryBlock", "ReidResult", "attribute_metrics", "majority_baseline",
    "MajorityGap", "majority_classes", "majority_gaps",
    "pairwise_distance", "predict_labels", "reid_metrics", "reid_metrics_streamed", "rerank",
    "rerank_dense", "selection_score",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
