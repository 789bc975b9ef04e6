"""Attributes with their confidence: which predicted values to show as facts (issue 30).

A head's most probable class is right more often the more probable it is. On labelled crops
(the calibration set, e.g. the Market-1501 test crops with their identity-level attributes)
each task gets the smallest probability at which values that probable were right
:data:`PRECISION` of the time or more (the isotonic regression of right on probability, so
the rate holds at the threshold itself, not only on average above it); a value below it is
*uncertain* and shown so ("female?" with its probability), a value at or above it is *sure*.
A head no better than always predicting its majority class
(:func:`attreid.metrics.attributes.majority_gaps`: the 95 % bootstrap interval of the accuracy
gap, identities resampled, does not lie above 0) is *unreliable*: every value it gives is
uncertain.

The thresholds hold for crops like the calibration's; on another camera network the heads can
be confidently wrong (a model trained on Market-1501 alone), which the distance drift check of
:mod:`attreid.inference.verdicts` is the warning for. ``benchmarks/attribute_confidence.py``
measures the sure values' precision on held-out identities.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from attreid.schema import MISSING, TASKS

PRECISION = 0.9
"""How often values as probable as a threshold were right on the calibration crops (where the
isotonic fit reaches it; the sure values above it are right at least this often)."""
MIN_SURE = 50
"""Labelled crops a threshold rests on at least; fewer right-enough values: no value is sure."""


def sure_threshold(confidence: np.ndarray, right: np.ndarray, precision: float = PRECISION,
                   min_count: int = MIN_SURE) -> float | None:
    """The smallest probability ``t`` at which values as probable were right at least
    ``precision`` of the time: where the isotonic (increasing) regression of ``right`` on
    ``confidence`` reaches ``precision``, so that every value at or above ``t`` sits where
    the head is right that often (not only on average: a head right 92 % of the time overall
    is still a coin toss at 0.55). 0.0: every value; None: no such ``t`` with at least
    ``min_count`` values at or above it.

    Args:
        confidence: (N,) probability of each predicted value; right: (N,) bool.
    """
    from sklearn.isotonic import IsotonicRegression

    conf = np.asarray(confidence, dtype=np.float64)
    if not len(conf):
        return None
    fitted = IsotonicRegression(increasing=True).fit(
        conf, np.asarray(right, dtype=np.float64)).predict(conf)
    reached = conf[fitted >= precision - 1e-12]
    if not reached.size:
        return None
    t = float(reached.min())
    if int((conf >= t).sum()) < min_count:
        return None
    return 0.0 if t <= conf.min() else t


def fit_attribute_confidence(probabilities: Mapping[str, np.ndarray], targets: np.ndarray,
                             identities: np.ndarray | None = None,
                             precision: float = PRECISION) -> dict[str, dict[str, Any]]:
    """Each trained task's threshold and head check, on labelled crops.

    Args:
        probabilities: task -> (N, C) class probabilities (binary: [P(0), P(1)]), the tasks
            the model was trained on; targets: (N, 12) int labels, ``MISSING`` unknown;
            identities: (N,) the person of each crop (bootstrap units), None: the crops.

    Returns:
        task -> ``{"threshold"`` (None: nothing is sure), ``"precision"`` and ``"sure"`` (the
        right share and the share of values at or above it), ``"accuracy"``, ``"majority"``
        (of the targets' majority class), ``"gap"`` ([low, high], 95 %),
        ``"better_than_majority"``, ``"images"}``; tasks without labels are left out.
    """
    from attreid.metrics.attributes import majority_gaps  # torch: only when fitting

    targets = np.asarray(targets, dtype=np.int64)
    predicted = np.full(targets.shape, MISSING, dtype=np.int64)
    for j, task in enumerate(TASKS):
        if task.name in probabilities:
            predicted[:, j] = np.asarray(probabilities[task.name]).argmax(1)
    gaps = majority_gaps(predicted, targets, groups=identities)
    out: dict[str, dict[str, Any]] = {}
    for j, task in enumerate(TASKS):
        if task.name not in gaps:
            continue
        known = (targets[:, j] != MISSING) & (predicted[:, j] != MISSING)
        conf = np.asarray(probabilities[task.name], dtype=np.float64)[known].max(1)
        right = predicted[known, j] == targets[known, j]
        gap = gaps[task.name]
        t = sure_threshold(conf, right, precision) if gap.better else None
        sure = conf >= t if t is not None else np.zeros(len(conf), dtype=bool)
        out[task.name] = {
            "threshold": t, "precision": float(right[sure].mean()) if sure.any() else None,
            "sure": float(sure.mean()), "accuracy": gap.accuracy, "majority": gap.majority,
            "gap": [gap.low, gap.high], "better_than_majority": gap.better,
            "images": gap.images}
    return out


def judge_attributes(attributes: Mapping[str, Mapping[str, Any]],
                     confidence: Mapping[str, Mapping[str, Any]] | None
                     ) -> dict[str, dict[str, Any]]:
    """``attributes`` (task -> ``{"value", "probability"}``) with ``"sure"`` and ``"reliable"``
    added: booleans by ``confidence`` (:func:`fit_attribute_confidence`), None without one
    (no calibration, or a task it has no labels for: only the probability speaks)."""
    out = {}
    for task, a in attributes.items():
        fit = (confidence or {}).get(task)
        if fit is None:
            out[task] = {**a, "sure": None, "reliable": None}
            continue
        reliable = bool(fit["better_than_majority"])
        t = fit["threshold"]
        out[task] = {**a, "sure": reliable and t is not None and a["probability"] >= t,
                     "reliable": reliable}
    return out


def shown_value(value: str, attribute: Mapping[str, Any]) -> str:
    """How a person reads one value: ``female`` when sure (or nothing is known of it),
    ``female?`` when uncertain."""
    return f"{value}?" if attribute.get("sure") is False else value


def attribute_summary(confidence: Mapping[str, Mapping[str, Any]] | None
                      ) -> dict[str, Any] | None:
    """What a client shows beside judged attributes: ``{"precision"`` (:data:`PRECISION`: how
    often values at a threshold were right), ``"unreliable"`` (the tasks no better than their
    majority class)``}``, or None without a confidence fit."""
    if not confidence:
        return None
    return {"precision": PRECISION,
            "unreliable": [t for t, fit in confidence.items()
                           if not fit["better_than_majority"]]}
