"""What a calibration fits besides the distance mapping (:mod:`attreid.inference.calibration`):
the *person check* (P(person) of a crop from its embedding, people against distractors) and the
*search fit* (P(same person) of a search hit, from the hits of the calibration set's own
searches), and the quantiles it records of what it was fitted on (the drift check's reference).
"""

from __future__ import annotations

from typing import Any

import numpy as np


PERSON_MIN_DISTRACTORS = 10
"""Distractor crops needed to fit the person check (fewer: no check). A floor, not a quality
bar: benchmarks/verification.py measures the check on held-out identities (AUC)."""
PERSON_REFUSES = 0.01
"""Share of the calibration set's people the person check may refuse (sets its threshold)."""
PERSON_C = 0.01
"""Inverse L2 strength of the person check's logistic regression (0.01-1 measured alike on
Market-1501: held-out AUC 0.960 / 0.959 / 0.955)."""
SEARCH_TOP = 10
"""Hits per query the search P(same) is fitted on (:func:`fit_search`)."""
QUANTILES = 101
"""Quantiles stored of each fitted distribution (the drift check's reference)."""


def quantiles(values: np.ndarray) -> list[float]:
    """:data:`QUANTILES` evenly spaced quantiles (levels 0..1) of ``values``."""
    return np.quantile(np.asarray(values, dtype=np.float64),
                       np.linspace(0.0, 1.0, QUANTILES)).tolist()


def fit_search(embeddings: Any, identities: np.ndarray, metric: str,
               queries: np.ndarray | None = None, top: int = SEARCH_TOP,
               block: int = 512) -> dict[str, Any] | None:
    """P(same person) of a search hit, fitted on the hits of the set's own searches: each
    query crop (``queries``; without them every person's crop, against all the others) is
    searched in the gallery (the crops that are not queries), and a logistic regression on the
    distance of its ``top`` hits learns whether a hit is the query's person (any camera).

    A hit's P(same) depends on how many crops of the person the gallery holds and of what
    strangers it is made; fitted on searches, it carries the prior of searches like the
    calibration's (Market-1501 half A: 18.7 crops of the person among 7,948). Measured on
    held-out identities (benchmarks/search_verdicts.py) it beat the pair mapping under a
    prior ``m / N`` for every ``m`` tried.

    Args:
        embeddings: (N, D); identities: (N,) int, people >= 0 (distractors < 0 are only
            ever strangers); queries: (N,) bool or None.
    Returns:
        ``{"a", "b", "queries", "gallery", "matches", "top"}`` or None when no query has a
        match in the gallery, or every hit does.
    """
    from attreid.metrics.distance import pairwise_distance  # torch: only to measure
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(embeddings, dtype=np.float32)
    ids = np.asarray(identities, dtype=np.int64)
    if queries is None:
        rows, cols = np.flatnonzero(ids >= 0), np.arange(len(ids))
    else:
        rows, cols = np.flatnonzero(np.asarray(queries) & (ids >= 0)), np.flatnonzero(
            ~np.asarray(queries))
    if not len(rows) or len(cols) <= top:
        return None
    d_hits, same = [], []
    for start in range(0, len(rows), block):
        part = rows[start:start + block]
        d = pairwise_distance(x[part], x[cols], metric).double().numpy()
        d[part[:, None] == cols[None, :]] = np.inf  # a crop is not its own hit
        order = np.argsort(d, axis=1, kind="stable")[:, :top]
        d_hits.append(np.take_along_axis(d, order, 1).ravel())
        same.append((ids[cols][order] == ids[part][:, None]).ravel())
    dist, label = np.concatenate(d_hits), np.concatenate(same)
    if label.all() or not label.any():
        return None
    model = LogisticRegression(C=np.inf).fit(dist[:, None], label)
    in_gallery = np.zeros(len(ids), bool)
    in_gallery[cols] = True
    people, counts = np.unique(ids[cols], return_counts=True)
    per_person = dict(zip(people.tolist(), counts.tolist()))
    matches = float(np.mean([per_person.get(int(ids[r]), 0) - int(in_gallery[r])
                             for r in rows]))
    return {"a": float(model.coef_[0, 0]), "b": float(model.intercept_[0]),
            "queries": int(len(rows)), "gallery": int(len(cols)), "matches": matches,
            "top": int(top)}


def score_person(check: dict[str, Any], embeddings: Any, metric: str) -> np.ndarray:
    """P(person) of each embedding (N, D) by a person check of :func:`fit_person`."""
    x = _for_metric(np.atleast_2d(np.asarray(embeddings, dtype=np.float64)), metric)
    z = x @ np.asarray(check["coef"]) + check["intercept"]
    return 1.0 / (1.0 + np.exp(-z))


def _for_metric(x: np.ndarray, metric: str) -> np.ndarray:
    """The rows the person check sees: unit vectors for a cosine checkpoint."""
    if metric != "cosine":
        return x
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_person(embeddings: np.ndarray, is_person: np.ndarray, metric: str
               ) -> dict[str, Any] | None:
    """The person check (see the module docstring) from embeddings (N, D) and whether each crop
    shows a person (N,) bool; None with fewer than :data:`PERSON_MIN_DISTRACTORS` distractors."""
    from sklearn.linear_model import LogisticRegression

    distractors = int((~is_person).sum())
    if distractors < PERSON_MIN_DISTRACTORS or not is_person.any():
        return None
    x = _for_metric(np.asarray(embeddings, dtype=np.float64), metric)
    model = LogisticRegression(C=PERSON_C, class_weight="balanced", max_iter=5000)
    model.fit(x, is_person)
    p = model.predict_proba(x)[:, 1]
    threshold = float(np.quantile(p[is_person], PERSON_REFUSES))
    return {"coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0]),
            "threshold": threshold, "refuses": PERSON_REFUSES,
            "quantiles": quantiles(p[is_person]), "all_quantiles": quantiles(p),
            "distractors_passing": float(np.mean(p[~is_person] >= threshold)),
            "people": int(is_person.sum()), "distractors": distractors}
