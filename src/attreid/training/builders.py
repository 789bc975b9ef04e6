"""The pieces of a training run built from a Config: the data bundle (training data, validation
set, identity targets), the multi-task criterion, the optimizer and its learning-rate schedule,
the seeded PK batches of each epoch and the decoded-image cache."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from attreid.config import (
    Config,
)
from attreid.data.batch_transforms import BatchAugment
from attreid.data.cache import CachedLoader, ImageCache
from attreid.data.dataset import ImageDataset
from attreid.data.evalset import (
    EvaluationSet,
    build_evaluation_set,
    identity_targets,
    test_is_labelled,
)
from attreid.data.load import load_dataset
from attreid.data.records import DataError
from attreid.data.sampler import PKSampler
from attreid.data.transforms import build_transforms, transform_config
from attreid.training import distributed
from attreid.training.checks import check_training_data
from attreid.training.distributed import SINGLE, DistInfo, RankBatches
from attreid.training.losses import MultiTaskLoss, positive_ratio_weights

Log = Callable[[str], None]
"""Where progress lines go (``print`` by default)."""


@dataclass
class DataBundle:
    """Training data and the validation set built from a DataConfig."""

    train: ImageDataset
    val: EvaluationSet | None
    train_targets: np.ndarray  # (N_ids, 12) identity-level task labels of the training set


def build_data(cfg: Config) -> DataBundle:
    """Load the dataset of ``cfg.data``; split it into training data and a validation set
    (``None`` for split ``test`` when the query/gallery images are unlabelled)."""
    if not cfg.data.root:
        raise DataError("no dataset: set data.root (attreid train --data DIR)")
    dataset = load_dataset(cfg.data.root, cfg.data.layout)
    if cfg.data.split == "test" and not test_is_labelled(dataset):
        train, val = dataset.train, None
    else:
        val = build_evaluation_set(dataset, cfg.data.split, cfg.data.val_ids,
                                   cfg.data.split_seed)
        train = val.train
        if not train:
            raise DataError(f"{cfg.data.root}: split {cfg.data.split!r} leaves no training "
                            "identity; use split 'random' with fewer data.val_ids")
    transform = build_transforms(transform_config(cfg), train=True)
    return DataBundle(ImageDataset(train, transform), val, identity_targets(train))


def check_bundle(cfg: Config, bundle: DataBundle) -> list[str]:
    """:func:`attreid.training.checks.check_training_data` of a loaded bundle: returns warnings,
    raises a DataError for what would fail later."""
    val = bundle.val
    return check_training_data(cfg, cfg.data.root, bundle.train.pids(),
                               None if val is None else val.query,
                               None if val is None else val.gallery,
                               val is not None and val.all_vs_all, bundle.train_targets)


def model_kwargs(cfg: Config, num_identities: int) -> dict[str, Any]:
    m = cfg.model
    return dict(name=m.name, backbone=m.backbone, weights=m.weights,
                study_strides=m.study_strides, last_stride=m.last_stride,
                embedding_dim=m.embedding_dim, hidden_dim=m.hidden_dim, bnneck=m.bnneck,
                num_identities=num_identities if m.id_head else 0, dropout=m.dropout,
                pooling=m.pooling,
                input_size=(cfg.data.height, cfg.data.width))


def build_criterion(cfg: Config, train_targets: np.ndarray, info: DistInfo = SINGLE
                    ) -> MultiTaskLoss:
    """The multi-task loss of ``cfg.loss``; positive-ratio weights come from the train labels.
    In a distributed run the triplet loss mines the batch of all ranks."""
    c = cfg.loss
    pos = positive_ratio_weights(train_targets) if c.pos_weighting else None
    gather = partial(distributed.gather, info=info) if info.enabled else None
    return MultiTaskLoss(triplet_mining=c.triplet, margin=c.margin, soft_margin=c.soft_margin,
                         distance=c.distance, id_weight=c.id_weight,
                         label_smoothing=c.label_smoothing, pos_weights=pos,
                         weighting=c.weighting, reid_weight=c.reid_weight,
                         attr_weight=c.attr_weight, gather=gather)


def build_optimizer(cfg: Config, model: nn.Module, criterion: nn.Module, fused: bool = False
                    ) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the model (with weight decay) and the loss weights (without).
    ``fused``: PyTorch's fused kernels (one or a few per step on CUDA; they also skip a step
    whose ``found_inf`` is set, which :mod:`attreid.training.deferred` needs)."""
    o = cfg.optim
    groups = [{"params": [p for p in model.parameters() if p.requires_grad],
               "weight_decay": o.weight_decay}]
    extra = [p for p in criterion.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    kind = {"fused": True} if fused else {}
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, **kind)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr, **kind)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=0.9, nesterov=True, **kind)
    raise ValueError(f"optim.name={o.name!r}: expected adam, adamw or sgd")


def lr_factor(cfg: Config, epoch: int) -> float:
    """Learning-rate multiplier of 0-based ``epoch``: linear warm-up from 0.1, then the schedule."""
    o = cfg.optim
    if epoch < o.warmup_epochs:
        return 0.1 + 0.9 * epoch / o.warmup_epochs
    if o.scheduler == "none":
        return 1.0
    if o.scheduler == "step":
        return o.gamma ** sum(epoch >= s for s in o.step_epochs)
    if o.scheduler == "cosine":
        span = max(1, o.epochs - o.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * (epoch - o.warmup_epochs) / span))
    raise ValueError(f"optim.scheduler={o.scheduler!r}: expected none, step or cosine")


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    entropy = [seed, epoch] if rank == 0 else [seed, epoch, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def make_loader(cfg: Config, data: ImageDataset, epoch: int, cache: ImageCache | None = None,
                device: torch.device | None = None, info: DistInfo = SINGLE
                ) -> Iterable[dict[str, Any]]:
    """The training batches of one epoch, seeded by (seed, epoch) for exact resume.

    With ``cache`` (``data.cache``) batches come from the decoded images in memory, augmented
    as whole batches; otherwise from a DataLoader with ``data.workers`` worker processes.
    In a distributed run each rank gets its ``P / W`` identities of every global batch.
    """
    pk = PKSampler(data.pids(), cfg.data.p, cfg.data.k, seed=cfg.train.seed,
                   num_batches=cfg.data.batches_per_epoch or None)
    pk.set_epoch(epoch)
    sampler = RankBatches(pk, cfg.data.p, cfg.data.k, info) if info.enabled else pk
    generator = torch.Generator().manual_seed(epoch_seed(cfg.train.seed, epoch, info.rank))
    if cache is not None:
        augment = BatchAugment(transform_config(cfg), train=True,
                               channels_last=cfg.train.channels_last)
        return CachedLoader(data, cache, sampler, augment, generator,
                            device=device or torch.device("cpu"))
    return DataLoader(data, batch_sampler=sampler, num_workers=cfg.data.workers,
                      generator=generator, pin_memory=torch.cuda.is_available())


def build_cache(cfg: Config, data: ImageDataset, log: Log = print,
                device: torch.device | None = None) -> ImageCache | None:
    """The decoded training images when ``data.cache`` is on, else None. On a GPU ``device``
    the whole cache moves there once (Market-1501's 12,936 training images take 1.3 GB at
    256x128), so batches are sliced and augmented without leaving the GPU."""
    if not cfg.data.cache:
        return None
    start = time.perf_counter()
    cache = ImageCache.build([r.path for r in data.records], cfg.data.height, cfg.data.width,
                             cache_dir=cfg.data.cache_dir or None)
    log(f"image cache: {len(cache)} images, {cache.nbytes / 2**20:.0f} MiB, "
        f"{time.perf_counter() - start:.1f} s")
    if device is not None and device.type == "cuda":
        return ImageCache(cache.images.to(device), cache.paths)
    return cache
