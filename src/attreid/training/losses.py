"""Losses of the joint model: triplet and ID losses (re-ID), masked attribute losses and the
multi-task combination.

Every loss is a pure function or a small ``nn.Module`` that returns tensors; nothing logs.
:class:`MultiTaskLoss` returns a dict of named scalar terms, ``"loss"`` being the one to
backpropagate; the engine logs the others. Non-finite values are never masked: a NaN/inf in the
features or logits reaches ``"loss"``.

Shapes: B batch size, D feature width, C number of identities.
"""

from __future__ import annotations

from typing import Callable, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from attreid.models.output import ModelOutput
from attreid.schema import MISSING, NUM_TASKS, TASK_NAMES, TASKS

Mining = Literal["batch_all", "batch_hard"]
Distance = Literal["euclidean", "squared", "cosine"]
MININGS: tuple[str, ...] = ("batch_all", "batch_hard")
DISTANCES: tuple[str, ...] = ("euclidean", "squared", "cosine")

_POSITIVE_EPS = 1e-16  # a triplet "has positive loss" when its loss exceeds this (the study's)
_SQRT_CLAMP = 1e-12  # squared distances are clamped to this before sqrt (finite gradient at 0)


# --------------------------------------------------------------------------------------------
# Re-ID
# --------------------------------------------------------------------------------------------


def pairwise_distance(features: torch.Tensor, distance: Distance = "euclidean") -> torch.Tensor:
    """All pairwise distances of a batch.

    Args:
        features: (B, D).
        distance: ``"euclidean"`` (plain L2; squared distances are clamped to 1e-12 before the
            square root, so identical features get a finite, zero gradient and the diagonal is
            ~1e-6 rather than 0), ``"squared"`` (squared L2) or ``"cosine"`` (1 - cosine
            similarity of the L2-normalised features).

    Returns:
        (B, B) distances.
    """
    if distance == "cosine":
        normed = F.normalize(features, dim=1)
        return (1.0 - normed @ normed.T).clamp_min(0.0)
    sq = features.pow(2).sum(dim=1)  # (B,)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * features @ features.T).clamp_min(0.0)  # (B, B)
    if distance == "squared":
        return d2
    if distance == "euclidean":
        return d2.clamp_min(_SQRT_CLAMP).sqrt()
    raise ValueError(f"unknown distance {distance!r}, expected one of {DISTANCES}")


def _check_batch(features: torch.Tensor, labels: torch.Tensor) -> None:
    if features.dim() != 2:
        raise ValueError(f"features must be (B, D), got shape {tuple(features.shape)}")
    if labels.shape != (features.shape[0],):
        raise ValueError(
            f"labels must be (B,) = ({features.shape[0]},), got shape {tuple(labels.shape)}"
        )


def _masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, B) positive mask (same label, a != p) and negative mask (different label)."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def _stats(num_valid: torch.Tensor, num_positive: torch.Tensor) -> dict[str, torch.Tensor]:
    num_valid, num_positive = num_valid.detach().float(), num_positive.detach().float()
    return {
        "num_valid": num_valid,
        "num_positive": num_positive,
        "frac_positive": num_positive / num_valid.clamp_min(1.0),
    }


def _batch_all(dist: torch.Tensor, labels: torch.Tensor, margin: float, soft: bool
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    pos, neg = _masks(labels)
    valid = pos[:, :, None] & neg[:, None, :]  # (B, B, B) [a, p, n]
    gap = dist[:, :, None] - dist[:, None, :]  # (B, B, B) d(a,p) - d(a,n)
    # masks instead of gap[valid]: boolean indexing makes the host wait for a GPU
    if soft:
        losses = torch.where(valid, F.softplus(gap), 0.0)
        loss = losses.sum() / valid.sum().clamp_min(1)
        return loss, _stats(valid.sum(), (valid & (gap > 0)).sum())
    losses = torch.where(valid, F.relu(gap + margin), 0.0)
    num_positive = (losses > _POSITIVE_EPS).sum()
    return losses.sum() / num_positive.clamp_min(1), _stats(valid.sum(), num_positive)


def _batch_hard(dist: torch.Tensor, labels: torch.Tensor, margin: float, soft: bool
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    pos, neg = _masks(labels)
    has = pos.any(dim=1) & neg.any(dim=1)  # (B,) anchors with a positive and a negative
    d_ap = dist.masked_fill(~pos, float("-inf")).max(dim=1).values  # (B,) hardest positive
    d_an = dist.masked_fill(~neg, float("inf")).min(dim=1).values  # (B,) hardest negative
    gap = d_ap - d_an  # -inf for an anchor without a positive or a negative, never NaN
    if soft:
        losses = torch.where(has, F.softplus(gap), 0.0)
        num_positive = (has & (gap > 0)).sum()
    else:
        losses = torch.where(has, F.relu(gap + margin), 0.0)
        num_positive = (losses > _POSITIVE_EPS).sum()
    return losses.sum() / has.sum().clamp_min(1), _stats(has.sum(), num_positive)


def triplet_loss_with_stats(
    features: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 1.0,
    mining: Mining = "batch_all",
    soft_margin: bool = False,
    distance: Distance = "euclidean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`triplet_loss` plus detached statistics for logging.

    Returns:
        ``(loss, stats)``: ``loss`` a scalar; ``stats`` holds float scalars ``"num_valid"``
        (valid triplets for batch-all, anchors with a positive and a negative for batch-hard),
        ``"num_positive"`` (of those, how many have loss > 1e-16; with ``soft_margin``, how
        many are violated, d(a,p) > d(a,n)) and ``"frac_positive"`` (their ratio, 0 when
        nothing is valid).
    """
    _check_batch(features, labels)
    if mining not in MININGS:
        raise ValueError(f"unknown mining {mining!r}, expected one of {MININGS}")
    dist = pairwise_distance(features, distance)  # (B, B)
    mine = _batch_all if mining == "batch_all" else _batch_hard
    return mine(dist, labels, margin, soft_margin)


def triplet_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 1.0,
    mining: Mining = "batch_all",
    soft_margin: bool = False,
    distance: Distance = "euclidean",
) -> torch.Tensor:
    """Triplet loss over a batch, with online mining.

    * ``"batch_all"`` (the study): every valid triplet (a, p, n) — a != p of one label, n of
      another — gives l = relu(d(a,p) - d(a,n) + margin); the loss is the mean of l over the
      triplets with l > 1e-16 (0 when none). With ``soft_margin`` it is the mean of
      softplus(d(a,p) - d(a,n)) over all valid triplets.
    * ``"batch_hard"`` (Hermans et al. 2017): per anchor the hardest positive (max d) and the
      hardest negative (min d); mean of relu(d_ap - d_an + margin) — or softplus(d_ap - d_an)
      with ``soft_margin`` (``margin`` ignored) — over anchors having both.

    A batch without any valid triplet (one identity, or only singletons) gives a zero that is
    still connected to ``features``, so ``backward`` works.

    Args:
        features: (B, D) float.
        labels: (B,) int identity labels (any integers; only equality matters).
        margin: hinge margin (unused with ``soft_margin``).
        mining: ``"batch_all"`` or ``"batch_hard"``.
        soft_margin: softplus instead of the hinge.
        distance: see :func:`pairwise_distance`.

    Returns:
        Scalar loss.
    """
    return triplet_loss_with_stats(features, labels, margin, mining, soft_margin, distance)[0]


def id_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.1
            ) -> torch.Tensor:
    """Identity cross-entropy with label smoothing.

    loss_i = (1 - eps) * (-log p_i[y_i]) + eps * mean_c(-log p_i[c]), averaged over the batch.

    Args:
        logits: (B, C).
        labels: (B,) int64 contiguous identity labels in 0..C-1.
        label_smoothing: eps in [0, 1].

    Returns:
        Scalar loss.
    """
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


# --------------------------------------------------------------------------------------------
# Attributes
# --------------------------------------------------------------------------------------------


def _connected_zero(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A scalar 0 with a grad_fn reaching ``tensors`` (NaN stays NaN: nothing is hidden)."""
    return sum(t.sum() for t in tensors) * 0.0


def _cheap_to_read(t: torch.Tensor) -> bool:
    """Whether reading ``t``'s values on the host is free (a CPU tensor); on a GPU it waits for
    every queued kernel."""
    return t.device.type == "cpu"


def _check_attribute_inputs(logits: Mapping[str, torch.Tensor], targets: torch.Tensor) -> None:
    if set(logits) != set(TASK_NAMES):
        raise ValueError(
            f"attribute logits must have the tasks {TASK_NAMES}, got {sorted(logits)}"
        )
    if targets.dim() != 2 or targets.shape[1] != NUM_TASKS:
        raise ValueError(f"targets must be (B, {NUM_TASKS}), got shape {tuple(targets.shape)}")
    for i, task in enumerate(TASKS):
        shape = tuple(logits[task.name].shape)
        if shape != (targets.shape[0], task.num_outputs):
            raise ValueError(f"logits of task {task.name!r}: expected shape "
                             f"({targets.shape[0]}, {task.num_outputs}), got {shape}")
    if not _cheap_to_read(targets):
        return  # schema.raw_to_tasks made the dataset's labels in range
    for i, task in enumerate(TASKS):
        bad = (targets[:, i] < MISSING) | (targets[:, i] >= task.num_classes)
        if bad.any():
            raise ValueError(f"task {task.name!r}: target {int(targets[bad, i][0])} outside "
                             f"0..{task.num_classes - 1} (or {MISSING} for unknown)")


def _task_loss(logits: torch.Tensor, target: torch.Tensor, binary: bool,
               pos_weight: float | None) -> torch.Tensor:
    """Mean loss of one task over its known samples (target != MISSING; 0 when none): logits
    (B, O), target (B,). Masked sums, not ``logits[known]``: boolean indexing makes the host
    wait for a GPU."""
    known = target != MISSING  # (B,)
    if not binary:
        each = F.cross_entropy(logits, target, ignore_index=MISSING, reduction="none")
    else:
        pw = None if pos_weight is None else torch.full((), pos_weight, dtype=logits.dtype,
                                                        device=logits.device)
        each = F.binary_cross_entropy_with_logits(
            logits[:, 0], target.clamp_min(0).to(logits.dtype), pos_weight=pw, reduction="none")
    each = torch.where(known, each, 0.0)
    return each.sum() / known.sum().clamp_min(1)


def _check_weights(task_weights: Sequence[float] | None,
                   pos_weights: Mapping[str, float] | None) -> list[float]:
    weights = [1.0] * NUM_TASKS if task_weights is None else [float(w) for w in task_weights]
    if len(weights) != NUM_TASKS or any(w < 0 for w in weights):
        raise ValueError(f"task_weights must be {NUM_TASKS} non-negative floats in the order "
                         f"{TASK_NAMES}, got {task_weights!r}")
    binary = {t.name for t in TASKS if t.is_binary}
    unknown = set(pos_weights or {}) - binary
    if unknown:
        raise ValueError(f"pos_weights apply to binary tasks {sorted(binary)} only, "
                         f"got {sorted(unknown)}")
    return weights


def attribute_loss(
    logits: Mapping[str, torch.Tensor],
    targets: torch.Tensor,
    task_weights: Sequence[float] | None = None,
    pos_weights: Mapping[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Masked multi-task attribute loss.

    Cross-entropy for age/upcolor/downcolor, BCE-with-logits on the single logit of the nine
    binary tasks. Each task's loss is the mean over the samples whose target is known; targets
    equal to :data:`~attreid.schema.MISSING` are ignored. A task with no known target in the
    batch gets a term of 0 and is left out of the average. The total is the average of the
    present tasks (the study), or sum(w_i L_i) / sum(w_i) over them with ``task_weights``
    (0 when no task is present or all present tasks weigh 0).

    Args:
        logits: task name -> (B, 1) for a binary task, (B, C) otherwise (all 12 tasks).
        targets: (B, 12) int64 0-based task labels, -1 where unknown.
        task_weights: 12 non-negative weights in :data:`~attreid.schema.TASKS` order.
        pos_weights: binary task name -> BCE ``pos_weight`` (see :func:`positive_ratio_weights`).

    Returns:
        ``"attr/<task>"`` for the 12 tasks and ``"attr"`` the total; all scalars.
    """
    _check_attribute_inputs(logits, targets)
    weights = _check_weights(task_weights, pos_weights)
    pos_weights = pos_weights or {}
    zero = _connected_zero(list(logits.values()))
    out: dict[str, torch.Tensor] = {}
    total, weight_sum = zero, torch.zeros_like(zero)
    for i, task in enumerate(TASKS):
        present = (targets[:, i] != MISSING).any()  # a device flag, never read on the host
        term = _task_loss(logits[task.name], targets[:, i], task.is_binary,
                          pos_weights.get(task.name))
        out[f"attr/{task.name}"] = term
        total = total + weights[i] * term
        weight_sum = weight_sum + weights[i] * present.to(zero.dtype)
    out["attr"] = torch.where(weight_sum > 0, total / weight_sum.clamp_min(1e-12), zero)
    return out


def positive_ratio_weights(
    targets: np.ndarray | torch.Tensor,
    max_weight: float = 10.0,
    min_weight: float | None = None,
) -> dict[str, float]:
    """BCE ``pos_weight`` per binary task: (#negatives / #positives) among known labels.

    Args:
        targets: (N, 12) task labels of the training set (one row per identity or per image,
            as the caller prefers), -1 where unknown.
        max_weight: upper clip (a task with no positive gets it).
        min_weight: lower clip; ``None`` means ``1 / max_weight`` (so a task whose labels are
            all positive does not get weight 0).

    Returns:
        binary task name -> weight, for the nine binary tasks.
    """
    matrix = np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets)
    if matrix.ndim != 2 or matrix.shape[1] != NUM_TASKS:
        raise ValueError(f"targets must be (N, {NUM_TASKS}), got shape {matrix.shape}")
    if max_weight <= 0:
        raise ValueError(f"max_weight must be positive, got {max_weight}")
    low = 1.0 / max_weight if min_weight is None else min_weight
    weights: dict[str, float] = {}
    for i, task in enumerate(TASKS):
        if not task.is_binary:
            continue
        pos = int((matrix[:, i] == 1).sum())
        neg = int((matrix[:, i] == 0).sum())
        ratio = neg / pos if pos > 0 else max_weight
        weights[task.name] = float(min(max(ratio, low), max_weight))
    return weights


# --------------------------------------------------------------------------------------------
# Multi-task weighting
# --------------------------------------------------------------------------------------------


class UncertaintyWeighting(nn.Module):
    """Learned homoscedastic-uncertainty weighting (Kendall et al. 2018), as the study coded it:

        L = L_reid / (2 * exp(2 * s0)) + s0 + L_attr / exp(2 * s1) + s1

    with learnable scalars ``s0``, ``s1`` (log sigma, initialised to 0). Add this module's
    parameters to the optimizer.
    """

    def __init__(self) -> None:
        super().__init__()
        self.s0 = nn.Parameter(torch.zeros(()))
        self.s1 = nn.Parameter(torch.zeros(()))

    def forward(self, l_reid: torch.Tensor, l_attr: torch.Tensor) -> dict[str, torch.Tensor]:
        """Combine two scalar losses.

        Returns:
            ``"total"``; detached ``"reid_weight"`` = 1 / (2 exp(2 s0)),
            ``"attr_weight"`` = 1 / exp(2 s1), ``"s0"``, ``"s1"``.
        """
        w_reid = 1.0 / (2.0 * torch.exp(2.0 * self.s0))
        w_attr = 1.0 / torch.exp(2.0 * self.s1)
        total = l_reid * w_reid + self.s0 + l_attr * w_attr + self.s1
        return {"total": total, "reid_weight": w_reid.detach(), "attr_weight": w_attr.detach(),
                "s0": self.s0.detach(), "s1": self.s1.detach()}


class FixedWeighting(nn.Module):
    """Fixed weights: L = w_reid * L_reid + w_attr * L_attr (no parameters)."""

    def __init__(self, w_reid: float = 1.0, w_attr: float = 1.0) -> None:
        super().__init__()
        self.w_reid, self.w_attr = float(w_reid), float(w_attr)

    def forward(self, l_reid: torch.Tensor, l_attr: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns ``"total"``, ``"reid_weight"``, ``"attr_weight"`` (constant scalars)."""
        total = self.w_reid * l_reid + self.w_attr * l_attr
        return {"total": total, "reid_weight": _constant(self.w_reid, total),
                "attr_weight": _constant(self.w_attr, total)}


def _constant(value: float, like: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor on ``like``'s device, filled there (``new_tensor`` copies from the host and
    makes it wait for a GPU)."""
    return torch.full((), value, dtype=like.dtype, device=like.device)


WEIGHTINGS: tuple[str, ...] = ("uncertainty", "fixed")


def build_weighting(name: str, w_reid: float = 1.0, w_attr: float = 1.0) -> nn.Module:
    """``"uncertainty"`` -> :class:`UncertaintyWeighting` (w_* ignored), ``"fixed"`` ->
    :class:`FixedWeighting` (w_reid, w_attr)."""
    if name == "uncertainty":
        return UncertaintyWeighting()
    if name == "fixed":
        return FixedWeighting(w_reid, w_attr)
    raise ValueError(f"unknown weighting {name!r}, expected one of {WEIGHTINGS}")


class MultiTaskLoss(nn.Module):
    """The joint loss: re-ID (triplet [+ ID]) and attributes, combined by a weighting.

        reid = triplet_weight * triplet(output.triplet_features)
               + id_weight * id_loss(output.id_logits)      # only when id_logits is not None
                                                             # and id_weight > 0
        attr = attribute_loss(output.attribute_logits)
        loss = weighting(reid, attr)

    Defaults reproduce the study: batch-all triplet, margin 1, Euclidean, uncertainty weighting.
    With ``weighting="uncertainty"`` this module has parameters (s0, s1): give them to the
    optimizer. ``gather`` maps this process's (B, ...) tensors to the batch of all processes
    (distributed training): the triplet loss then mines the global batch.
    """

    def __init__(
        self,
        *,
        triplet_mining: Mining = "batch_all",
        margin: float = 1.0,
        soft_margin: bool = False,
        distance: Distance = "euclidean",
        triplet_weight: float = 1.0,
        id_weight: float = 1.0,
        label_smoothing: float = 0.1,
        task_weights: Sequence[float] | None = None,
        pos_weights: Mapping[str, float] | None = None,
        weighting: str = "uncertainty",
        reid_weight: float = 1.0,
        attr_weight: float = 1.0,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if triplet_mining not in MININGS:
            raise ValueError(
                f"unknown triplet_mining {triplet_mining!r}, expected one of {MININGS}"
            )
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}, expected one of {DISTANCES}")
        _check_weights(task_weights, pos_weights)
        self.triplet_kwargs = dict(margin=margin, mining=triplet_mining,
                                   soft_margin=soft_margin, distance=distance)
        self.triplet_weight, self.id_weight = float(triplet_weight), float(id_weight)
        self.label_smoothing = float(label_smoothing)
        self.task_weights = None if task_weights is None else [float(w) for w in task_weights]
        self.pos_weights = None if pos_weights is None else dict(pos_weights)
        self.weighting = build_weighting(weighting, reid_weight, attr_weight)
        self.gather = gather

    def _reid(self, output: ModelOutput, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        features, batch_labels = output.triplet_features, labels
        if self.gather is not None:
            features, batch_labels = self.gather(features), self.gather(labels)
        triplet, stats = triplet_loss_with_stats(features, batch_labels, **self.triplet_kwargs)
        terms = {"triplet": triplet, "triplet/frac_positive": stats["frac_positive"]}
        reid = self.triplet_weight * triplet
        if output.id_logits is not None and self.id_weight > 0:
            terms["id"] = id_loss(output.id_logits, labels, self.label_smoothing)
            reid = reid + self.id_weight * terms["id"]
        terms["reid"] = reid
        return terms

    def forward(self, output: ModelOutput, labels: torch.Tensor, attributes: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """Compute all terms.

        Args:
            output: the model's output for B images.
            labels: (B,) int64 contiguous identity labels (triplet and ID loss).
            attributes: (B, 12) int64 task labels, -1 where unknown.

        Returns:
            Scalars ``"loss"`` (backpropagate this), ``"reid"``, ``"triplet"``,
            ``"triplet/frac_positive"`` (detached), ``"id"`` (only when the ID loss is used),
            ``"attr"``, ``"attr/<task>"`` x 12, ``"reid_weight"``, ``"attr_weight"`` (detached),
            and ``"s0"``, ``"s1"`` (detached) with uncertainty weighting.
        """
        terms = self._reid(output, labels)
        terms.update(attribute_loss(output.attribute_logits, attributes,
                                    self.task_weights, self.pos_weights))
        combined = self.weighting(terms["reid"], terms["attr"])
        terms["loss"] = combined.pop("total")
        terms.update(combined)
        return terms
