"""Validation during training: embed the validation set (shared among ranks in a distributed
run), score re-ID (CMC, mAP, mINP with the checkpoint's distance) and attribute accuracy."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from attreid.config import (
    Config,
)
from attreid.data.evalset import (
    EvaluationSet,
    labels_and_cameras,
)
from attreid.data.records import attribute_matrix
from attreid.data.transforms import transform_config
from attreid.inference.extraction import EXTRACT_BATCH, Features, extract
from attreid.metrics import attribute_metrics, majority_baseline, pairwise_distance, reid_metrics
from attreid.schema import MISSING
from attreid.training import distributed
from attreid.training.distributed import SINGLE, DistInfo

VALIDATION_SAMPLE = 256
"""Images whose extraction is timed to estimate a validation (:func:`estimate_validation_s`),
after one batch of warm-up."""


def _extract_kwargs(cfg: Config, device: torch.device) -> dict[str, Any]:
    return dict(transform=transform_config(cfg), device=device, amp=cfg.train.amp,
                channels_last=cfg.train.channels_last, flip=cfg.train.flip_test,
                workers=cfg.data.workers)


def estimate_validation_s(cfg: Config, model: nn.Module, val: EvaluationSet | None,
                          device: torch.device, info: DistInfo = SINGLE) -> float:
    """Seconds one :func:`validate` of ``val`` will take, estimated: the extraction of
    :data:`VALIDATION_SAMPLE` of its images timed (after a full batch of warm-up, which builds
    the kernels of the batch's shapes) and scaled to all of them, shared by the ranks, plus 5 %
    for the distances and metrics. 0 without validation."""
    if val is None:
        return 0.0
    images = len(val.gallery) + (0 if val.all_vs_all else len(val.query))
    records = val.gallery + val.query
    warm, sample = records[:EXTRACT_BATCH], records[EXTRACT_BATCH:][:VALIDATION_SAMPLE]
    kwargs = _extract_kwargs(cfg, device)
    extract(model, warm, **kwargs)  # warm-up: kernels for a full batch's shapes
    if not sample:  # a validation set of one batch: that batch, timed again
        sample = warm
    start = time.perf_counter()
    extract(model, sample, **kwargs)
    per_image = (time.perf_counter() - start) / len(sample)
    return 1.05 * per_image * images / info.world_size


def validate(cfg: Config, model: nn.Module, val: EvaluationSet, train_targets: np.ndarray,
             device: torch.device, info: DistInfo = SINGLE) -> dict[str, Any] | None:
    """Attribute accuracy per task (+ majority baseline) and re-ID CMC/mAP on ``val``.

    In a distributed run every rank embeds every W-th image and rank 0 scores the gathered
    features (the other ranks return None): the same numbers, W times faster to extract."""
    kwargs = _extract_kwargs(cfg, device)
    gallery = _extract_sharded(model, val.gallery, info, kwargs)
    query = gallery if val.all_vs_all else _extract_sharded(model, val.query, info, kwargs)
    if not info.is_main:
        return None
    metric = "euclidean" if cfg.loss.distance == "squared" else cfg.loss.distance
    dist = pairwise_distance(query.embeddings, gallery.embeddings, metric=metric)
    qids, gids, qcams, gcams = labels_and_cameras(val)
    reid = reid_metrics(dist, qids, gids, qcams, gcams, protocol=val.protocol,
                        exclude_self=val.all_vs_all)
    result = {"mAP": reid.mAP, "rank1": reid.rank(1), "rank5": reid.rank(5), "mINP": reid.mINP}
    targets = attribute_matrix(val.attribute_records)
    if (targets != MISSING).any():
        index = torch.from_numpy(val.attribute_index)
        attrs = attribute_metrics({k: v[index] for k, v in gallery.logits.items()}, targets)
        result.update(mean_accuracy=attrs.mean_accuracy, accuracy=attrs.accuracy, mA=attrs.mA,
                      majority=majority_baseline(train_targets, targets))
    return result


def _extract_sharded(model: nn.Module, records: list, info: DistInfo, kwargs: dict[str, Any]
                    ) -> Features:
    """:func:`extract` of ``records``, every rank taking every W-th record. Rank 0 gets the
    merged features of all records; the other ranks get only their own share (or nothing)."""
    if not info.enabled or len(records) < info.world_size:  # (too few to share: rank 0 alone)
        return extract(model, records, **kwargs) if info.is_main else Features(
            torch.empty(0), {})
    mine = extract(model, records[info.rank::info.world_size], **kwargs)
    parts = distributed.gather_objects((mine.embeddings, mine.logits), info)
    if not info.is_main:
        return mine
    merge = distributed.merge_strided
    return Features(merge([e for e, _ in parts]),
                    {task: merge([lg[task] for _, lg in parts]) for task in parts[0][1]})
