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

__all__ = [
    "BINARY_RAW_ATTRIBUTES", "DISTANCE_METRICS", "JUNK_ID", "PROTOCOLS", "ArrayLike",
    "AttributeResult", "GalleryBlock", "ReidResult", "attribute_metrics", "majority_baseline",
    "MajorityGap", "majority_classes", "majority_gaps",
    "pairwise_distance", "predict_labels", "reid_metrics", "reid_metrics_streamed", "rerank",
    "rerank_dense", "selection_score",
]
