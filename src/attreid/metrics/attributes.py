"""Attribute recognition metrics: per-task accuracy on the 12 tasks (``MISSING`` targets
ignored), majority-class baselines, and the PETA/RAP metrics (label-based mA, example-based
accuracy, precision, recall, F1) on the 26 raw binary attributes (Li et al. 2016, RAP)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch

from attreid.metrics.inputs import ArrayLike, to_numpy, to_tensor
from attreid.schema import MISSING, NUM_TASKS, RAW_ATTRIBUTES, TASK_NAMES, TASKS, tasks_to_raw

BINARY_RAW_ATTRIBUTES: tuple[str, ...] = RAW_ATTRIBUTES[1:]
"""The 26 raw binary attributes of the binary view: every raw column but ``age`` (9 binary
attributes, 8 upper and 9 lower colours). With ``age`` they make Market-1501's 27 attributes."""


def predict_labels(logits: Mapping[str, ArrayLike]) -> torch.Tensor:
    """Task logits -> predicted task labels (N, 12) int64, in the order of ``schema.TASKS``.

    Args:
        logits: task name -> logits, one entry per task of ``schema.TASK_NAMES`` (no others):
            binary tasks (N, 1) or (N,), class 1 where the logit > 0; multi-class tasks (N, C)
            with C = the task's classes, argmax (first maximum on ties).

    Returns:
        (N, 12) int64 tensor on the device of the first task's logits.
    """
    missing, unknown = set(TASK_NAMES) - set(logits), set(logits) - set(TASK_NAMES)
    if missing or unknown:
        raise ValueError(f"logits: expected the tasks {list(TASK_NAMES)}; "
                         f"missing {sorted(missing)}, unknown {sorted(unknown)}")
    first = to_tensor(logits[TASK_NAMES[0]], f"logits[{TASK_NAMES[0]!r}]")
    n, device = (first.shape[0] if first.ndim else -1), first.device
    columns: list[torch.Tensor] = []
    for task in TASKS:
        t = to_tensor(logits[task.name], f"logits[{task.name!r}]")
        expected = ((n, 1), (n,)) if task.is_binary else ((n, task.num_classes),)
        if tuple(t.shape) not in expected:
            raise ValueError(f"logits[{task.name!r}]: expected shape "
                             f"{' or '.join(map(str, expected))}, got {tuple(t.shape)}")
        pred = (t.reshape(n) > 0).long() if task.is_binary else t.argmax(1)
        columns.append(pred.to(device))  # (N,)
    return torch.stack(columns, dim=1)  # (N, 12)


def _check_labels(labels: np.ndarray, name: str, allow_missing: bool) -> np.ndarray:
    if labels.ndim != 2 or labels.shape[1] != NUM_TASKS:
        raise ValueError(f"{name}: expected shape (N, {NUM_TASKS}), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name}: expected integer labels, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    for j, task in enumerate(TASKS):
        col = labels[:, j]
        bad = ~((col >= 0) & (col < task.num_classes))
        if allow_missing:
            bad &= col != MISSING
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            allowed = f"{MISSING} (missing) or " if allow_missing else ""
            raise ValueError(f"{name}: row {row}, task {task.name!r} has label {col[row]}, "
                             f"expected {allowed}0..{task.num_classes - 1}")
    return labels


def _as_predictions(logits_or_preds: Mapping[str, ArrayLike] | ArrayLike) -> np.ndarray:
    if isinstance(logits_or_preds, Mapping):
        return predict_labels(logits_or_preds).cpu().numpy()
    return _check_labels(to_numpy(logits_or_preds, "predictions"), "predictions",
                         allow_missing=False)


def _majority_class(col: np.ndarray, num_classes: int) -> tuple[int, float]:
    """Most frequent class among the known labels of one task (ties -> lower index), its share."""
    known = col[col != MISSING]
    if known.size == 0:
        return MISSING, math.nan
    counts = np.bincount(known, minlength=num_classes)
    cls = int(counts.argmax())
    return cls, float(counts[cls] / known.size)


def _raw_binary(labels: np.ndarray) -> np.ndarray:
    """Fully known task labels (N, 12) -> 26 raw binary attributes (N, 26) bool (code 2 = True).

    Converted with ``schema.tasks_to_raw`` once per distinct row.
    """
    if len(labels) == 0:
        return np.zeros((0, len(BINARY_RAW_ATTRIBUTES)), dtype=bool)
    unique, inverse = np.unique(labels, axis=0, return_inverse=True)
    table = np.array([[tasks_to_raw(row)[a] == 2 for a in BINARY_RAW_ATTRIBUTES]
                      for row in unique])  # (U, 26)
    return table[inverse.reshape(-1)]


def _safe_ratio(num: np.ndarray, den: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """num / den where den > 0, else ``empty`` (float)."""
    out = np.asarray(empty, dtype=np.float64).copy()
    np.divide(num, den, out=out, where=den > 0)
    return out


def _label_based_ma(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-attribute (TPR + TNR) / 2 of (N, A) bool arrays -> (A,) float64.

    Guard: an attribute without positives (or negatives) in ``true`` has no TPR (TNR); it is
    scored by the defined rate alone (TNR, resp. TPR), not by counting the undefined rate as 0
    as the PETA/RAP code's ``TP / (P + eps)`` does (that caps a perfect prediction of an
    absent attribute at 0.5). With no rows at all it is NaN. :attr:`AttributeResult.one_sided`
    names the attributes scored so.
    """
    pos, neg = true.sum(0), (~true).sum(0)  # (A,)
    tpr = _safe_ratio((pred & true).sum(0), pos, np.full(pos.shape, np.nan))
    tnr = _safe_ratio((~pred & ~true).sum(0), neg, np.full(neg.shape, np.nan))
    both = np.stack([tpr, tnr])  # (2, A)
    counts = (~np.isnan(both)).sum(0)
    return np.where(counts > 0, np.nansum(both, 0) / np.maximum(counts, 1), np.nan)


def _one_sided(true: np.ndarray) -> tuple[str, ...]:
    """Binary attributes of (n, 26) bool targets with no positive or no negative (n > 0)."""
    if len(true) == 0:
        return ()
    pos = true.sum(0)
    return tuple(a for a, p in zip(BINARY_RAW_ATTRIBUTES, pos) if p == 0 or p == len(true))


def _example_based(pred: np.ndarray, true: np.ndarray) -> tuple[float, float, float, float]:
    """Example-based accuracy, precision, recall, F1 of (N, A) bool arrays (NaN when N = 0)."""
    if len(pred) == 0:
        return math.nan, math.nan, math.nan, math.nan
    inter = (pred & true).sum(1).astype(np.float64)  # (N,)
    union, n_pred, n_true = (pred | true).sum(1), pred.sum(1), true.sum(1)
    exact = (n_pred == 0) & (n_true == 0)  # both sets empty: a perfect prediction
    acc = _safe_ratio(inter, union, np.ones(len(inter))).mean()
    prec = _safe_ratio(inter, n_pred, exact.astype(np.float64)).mean()
    rec = _safe_ratio(inter, n_true, exact.astype(np.float64)).mean()
    f1 = 2 * prec * rec / (prec + rec) if prec + rec > 0 else 0.0
    return float(acc), float(prec), float(rec), float(f1)


@dataclass(frozen=True)
class AttributeResult:
    """Attribute metrics; every value is a fraction in [0, 1] or NaN where undefined.

    Task view (12 tasks; MISSING targets ignored per task):
        accuracy: task -> accuracy over its known targets (NaN: no known target).
        mean_accuracy: mean of ``accuracy`` over tasks with at least one known target.
        majority: task -> share of the most frequent class among its known targets (the
            accuracy of always predicting the majority class *of these targets*).
        mean_majority: mean of ``majority`` over the same tasks.

    Binary view (26 raw binary attributes, code 2 = positive; rows with any MISSING target
    skipped; NaN when no row is complete):
        mA: mean over attributes of (TPR + TNR) / 2 (label-based). Guard: an attribute
            without positives (or without negatives) among the targets has no TPR (TNR) and
            is scored by the defined rate alone, TNR (TPR); the PETA/RAP code's eps instead
            counts the missing rate as 0, which caps such an attribute at 0.5 however right
            the predictions. Both agree when every attribute has positives and negatives
            (Market-1501's test set); ``one_sided`` names the attributes where they differ.
        per_attribute_mA: attribute -> its (TPR + TNR) / 2 (one rate for ``one_sided``).
        one_sided: the binary attributes without positives or without negatives among the
            targets, scored by one rate (empty when every attribute has both).
        instance_accuracy, instance_precision, instance_recall: mean over samples of
            |P∩T| / |P∪T|, |P∩T| / |P|, |P∩T| / |T| (P, T = predicted / true positive
            attributes). An empty denominator gives 1 when P and T are both empty, else 0.
        instance_f1: 2 * precision * recall / (precision + recall) of the two means above
            (as in the PETA/RAP papers), 0 when both are 0.
        num_samples: N; num_complete_rows: rows used by the binary view.
    """

    accuracy: dict[str, float]
    mean_accuracy: float
    majority: dict[str, float]
    mean_majority: float
    mA: float
    per_attribute_mA: dict[str, float]
    instance_accuracy: float
    instance_precision: float
    instance_recall: float
    instance_f1: float
    num_samples: int
    num_complete_rows: int
    one_sided: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        """JSON-ready copy (fractions, not percent); NaN becomes ``None``."""
        def clean(v: object) -> object:
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            return None if isinstance(v, float) and math.isnan(v) else v

        return {name: clean(getattr(self, name)) for name in self.__dataclass_fields__}


def _task_accuracies(pred: np.ndarray, targets: np.ndarray) -> tuple[dict[str, float],
                                                                     dict[str, float]]:
    accuracy, majority = {}, {}
    for j, task in enumerate(TASKS):
        known = targets[:, j] != MISSING
        accuracy[task.name] = (float((pred[known, j] == targets[known, j]).mean())
                               if known.any() else math.nan)
        majority[task.name] = _majority_class(targets[:, j], task.num_classes)[1]
    return accuracy, majority


def _nanmean(values: Mapping[str, float]) -> float:
    known = [v for v in values.values() if not math.isnan(v)]
    return float(np.mean(known)) if known else math.nan


def attribute_metrics(logits_or_preds: Mapping[str, ArrayLike] | ArrayLike,
                      targets: ArrayLike) -> AttributeResult:
    """Attribute metrics of predictions against task targets (see :class:`AttributeResult`).

    Args:
        logits_or_preds: either task name -> logits (see :func:`predict_labels`), or predicted
            task labels (N, 12) int (no MISSING), numpy or torch.
        targets: (N, 12) int task labels, ``MISSING`` (-1) where unknown.

    Raises:
        ValueError: shapes differ, labels out of range, or every target is MISSING.
    """
    pred = _as_predictions(logits_or_preds)
    true = _check_labels(to_numpy(targets, "targets"), "targets", allow_missing=True)
    if pred.shape != true.shape:
        raise ValueError(f"predictions {pred.shape} and targets {true.shape}: shapes differ")
    if not (true != MISSING).any():
        raise ValueError(f"targets: all {true.size} labels are MISSING, nothing to evaluate")
    accuracy, majority = _task_accuracies(pred, true)
    complete = (true != MISSING).all(1)  # (N,)
    p_raw, t_raw = _raw_binary(pred[complete]), _raw_binary(true[complete])  # (n, 26)
    per_attr = _label_based_ma(p_raw, t_raw)  # (26,)
    acc, prec, rec, f1 = _example_based(p_raw, t_raw)
    return AttributeResult(
        accuracy=accuracy, mean_accuracy=_nanmean(accuracy),
        majority=majority, mean_majority=_nanmean(majority),
        mA=float(per_attr.mean()) if complete.any() else math.nan,
        per_attribute_mA={a: float(v) for a, v in zip(BINARY_RAW_ATTRIBUTES, per_attr)},
        instance_accuracy=acc, instance_precision=prec, instance_recall=rec, instance_f1=f1,
        num_samples=int(len(true)), num_complete_rows=int(complete.sum()),
        one_sided=_one_sided(t_raw),
    )


def majority_baseline(train_targets: ArrayLike, eval_targets: ArrayLike) -> dict[str, float]:
    """The study's "majority" column: accuracy of predicting the train-majority class.

    For each task, the most frequent class among the known ``train_targets`` (ties -> the lower
    class index) is predicted for every eval sample; the accuracy is over the known
    ``eval_targets``. Contrast with ``AttributeResult.majority``, which takes the majority of
    the evaluated targets themselves (an upper bound for any constant predictor).

    Args:
        train_targets: (N_train, 12) int task labels, MISSING where unknown.
        eval_targets: (N_eval, 12) int task labels, MISSING where unknown.

    Returns:
        task -> accuracy (fraction), NaN where the task has no known train or eval label.
    """
    train = _check_labels(to_numpy(train_targets, "train_targets"), "train_targets", True)
    evals = _check_labels(to_numpy(eval_targets, "eval_targets"), "eval_targets", True)
    out: dict[str, float] = {}
    for j, task in enumerate(TASKS):
        cls, _ = _majority_class(train[:, j], task.num_classes)
        known = evals[:, j][evals[:, j] != MISSING]
        out[task.name] = (float((known == cls).mean()) if cls != MISSING and known.size
                          else math.nan)
    return out


GAP_ROUNDS = 1000
"""Bootstrap rounds of :func:`majority_gaps` (the interval's ends move by about 0.1 point
between seeds on Market-1501 test at 1,000 rounds)."""


@dataclass(frozen=True)
class MajorityGap:
    """One task's accuracy against always predicting its majority class.

    Attributes:
        accuracy, majority: fractions over the known labels; ``majority`` is the accuracy of
            predicting the baseline's class for every image.
        low, high: the 95 % bootstrap interval of ``accuracy - majority`` (percentile method,
            identities resampled: the crops of one person share its labels, so images are not
            independent draws).
        images, groups: known labels, and the identities (or images) they came from.
    """

    accuracy: float
    majority: float
    low: float
    high: float
    images: int
    groups: int

    @property
    def better(self) -> bool:
        """Whether the head beats its majority class beyond chance (``low > 0``)."""
        return self.low > 0


def majority_classes(targets: ArrayLike) -> dict[str, int]:
    """The most frequent known class of each task (ties -> lower index; ``MISSING`` when a
    task has no known label). ``targets``: (N, 12) int, ``MISSING`` where unknown."""
    labels = _check_labels(to_numpy(targets, "targets"), "targets", True)
    return {task.name: _majority_class(labels[:, j], task.num_classes)[0]
            for j, task in enumerate(TASKS)}


def majority_gaps(predictions: ArrayLike, targets: ArrayLike,
                  baseline: Mapping[str, int] | None = None, groups: ArrayLike | None = None,
                  rounds: int = GAP_ROUNDS, seed: int = 0) -> dict[str, MajorityGap]:
    """Is each head better than its majority class? Accuracy, the baseline's accuracy and a
    bootstrap interval of their difference, per task with known labels.

    Args:
        predictions: (N, 12) predicted task labels (``MISSING``: a task the model was not
            trained on); targets: (N, 12), ``MISSING`` unknown.
        baseline: task -> the class a constant predictor would give (the train set's majority,
            the study's column); None or a ``MISSING`` entry: the targets' own majority (what
            a custom dataset without train labels has; an upper bound for any constant
            predictor, so the test is the stricter one).
        groups: (N,) identity of each image, resampled as units; None: images.

    Returns:
        task -> :class:`MajorityGap`; tasks without a known label or prediction are left out.

    Raises:
        ValueError: labels out of range, shapes that differ, or ``groups`` of another length.
    """
    pred = _check_labels(to_numpy(predictions, "predictions"), "predictions", True)
    true = _check_labels(to_numpy(targets, "targets"), "targets", True)
    if pred.shape != true.shape:
        raise ValueError(f"predictions {pred.shape} and targets {true.shape} differ in shape")
    own = majority_classes(true)
    ids = (np.arange(len(true)) if groups is None
           else np.asarray(to_numpy(groups, "groups")).reshape(-1))
    if len(ids) != len(true):
        raise ValueError(f"groups: {len(ids)} values for {len(true)} images")
    rng = np.random.default_rng(seed)
    out: dict[str, MajorityGap] = {}
    for j, task in enumerate(TASKS):
        known = (true[:, j] != MISSING) & (pred[:, j] != MISSING)
        if not known.any():
            continue
        cls = (baseline or {}).get(task.name, MISSING)
        cls = own[task.name] if cls == MISSING else cls
        out[task.name] = _gap(pred[known, j] == true[known, j], true[known, j] == cls,
                              ids[known], rounds, rng)
    return out


def _gap(right: np.ndarray, base: np.ndarray, ids: np.ndarray, rounds: int,
         rng: np.random.Generator) -> MajorityGap:
    """:class:`MajorityGap` of per-image hits of the head (``right``) and of the baseline."""
    _, group = np.unique(ids, return_inverse=True)
    count = int(group.max()) + 1
    size = np.bincount(group, minlength=count).astype(np.float64)
    hits = np.bincount(group, right, count) - np.bincount(group, base, count)
    draws = rng.integers(0, count, (rounds, count), dtype=np.int32)
    diff = hits[draws].sum(1) / size[draws].sum(1)
    low, high = np.percentile(diff, [2.5, 97.5])
    n = float(size.sum())
    return MajorityGap(float(right.sum() / n), float(base.sum() / n), float(low), float(high),
                       int(n), count)
