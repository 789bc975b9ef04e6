"""The training engine: data, model, loss and optimizer from a Config; epochs with validation,
atomic checkpoints, exact resume, JSON-lines metrics and a NaN guard.

Resume is exact: every epoch reseeds torch (main process) and the DataLoader's generator from
``(seed, epoch)``, and the PK sampler draws from ``(seed, epoch)`` too, so epoch ``e`` sees the
same batches and augmentations whether or not the run was interrupted before it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from attreid import __version__
from attreid.config import (
    Config,
    ConfigError,
    absolute_paths,
    config_differences,
    dump_yaml,
    to_dict,
    with_updates,
)
from attreid.data.batch_transforms import BatchAugment
from attreid.data.cache import CachedLoader, ImageCache
from attreid.data.dataset import ImageDataset
from attreid.data.evalset import (
    EvaluationSet,
    build_evaluation_set,
    identity_targets,
    labels_and_cameras,
    test_is_labelled,
)
from attreid.data.load import load_dataset
from attreid.data.records import DataError, attribute_matrix
from attreid.data.sampler import PKSampler
from attreid.data.transforms import build_transforms, transform_config
from attreid.errors import AttreidError
from attreid.inference.extraction import Features, autocast_context, extract, resolve_amp, to_float
from attreid.metrics import attribute_metrics, majority_baseline, pairwise_distance, reid_metrics
from attreid.metrics.selection import selection_score
from attreid.models import build_model
from attreid.schema import MISSING, labelled_tasks
from attreid.training import distributed
from attreid.training.checks import check_training_config, check_training_data
from attreid.training.distributed import SINGLE, DistInfo, RankBatches
from attreid.training.losses import MultiTaskLoss, positive_ratio_weights
from attreid.utils.backend import cpu_bf16_native, resolve_device
from attreid.utils.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from attreid.utils.files import atomic_write_text

Log = Callable[[str], None]


class NonFiniteLossError(AttreidError, RuntimeError):
    """The loss became NaN or infinite; the message says where and what was saved."""


@dataclass
class DataBundle:
    """Training data and the validation set built from a DataConfig."""

    train: ImageDataset
    val: EvaluationSet | None
    train_targets: np.ndarray  # (N_ids, 12) identity-level task labels of the training set


@dataclass
class TrainResult:
    """What :func:`train` returns: the output folder, the epochs run and the last metrics."""

    out: Path
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)


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
    """:func:`attreid.training.checks.check_training_data` of a loaded bundle: returns warnings, raises
    a DataError for what would fail later."""
    val = bundle.val
    return check_training_data(cfg, cfg.data.root, bundle.train.pids(),
                               None if val is None else val.query,
                               None if val is None else val.gallery,
                               val is not None and val.all_vs_all, bundle.train_targets)


def _model_kwargs(cfg: Config, num_identities: int) -> dict[str, Any]:
    m = cfg.model
    return dict(name=m.name, backbone=m.backbone, weights=m.weights,
                study_strides=m.study_strides, last_stride=m.last_stride,
                embedding_dim=m.embedding_dim, hidden_dim=m.hidden_dim, bnneck=m.bnneck,
                num_identities=num_identities if m.id_head else 0, dropout=m.dropout,
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


def build_optimizer(cfg: Config, model: nn.Module, criterion: nn.Module
                    ) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over the model (with weight decay) and the loss weights (without)."""
    o = cfg.optim
    groups = [{"params": [p for p in model.parameters() if p.requires_grad],
               "weight_decay": o.weight_decay}]
    extra = [p for p in criterion.parameters() if p.requires_grad]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    if o.name == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr)
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=0.9, nesterov=True)
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


def _epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
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
    generator = torch.Generator().manual_seed(_epoch_seed(cfg.train.seed, epoch, info.rank))
    if cache is not None:
        augment = BatchAugment(transform_config(cfg), train=True,
                               channels_last=cfg.train.channels_last)
        return CachedLoader(data, cache, sampler, augment, generator,
                            device=device or torch.device("cpu"))
    return DataLoader(data, batch_sampler=sampler, num_workers=cfg.data.workers,
                      generator=generator, pin_memory=torch.cuda.is_available())


def build_cache(cfg: Config, data: ImageDataset, log: Log = print) -> ImageCache | None:
    """The decoded training images when ``data.cache`` is on, else None."""
    if not cfg.data.cache:
        return None
    start = time.perf_counter()
    cache = ImageCache.build([r.path for r in data.records], cfg.data.height, cfg.data.width,
                             cache_dir=cfg.data.cache_dir or None)
    log(f"image cache: {len(cache)} images, {cache.nbytes / 2**20:.0f} MiB, "
        f"{time.perf_counter() - start:.1f} s")
    return cache


@dataclass
class _Parts:
    model: nn.Module
    criterion: MultiTaskLoss
    optimizer: torch.optim.Optimizer
    device: torch.device
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    info: DistInfo = SINGLE
    ddp: nn.Module | None = None  # the DistributedDataParallel wrapper of model, when used

    @property
    def trained(self) -> nn.Module:
        """The module to call in training steps (DDP when distributed, else the model)."""
        return self.ddp if self.ddp is not None else self.model


def _forward_loss(parts: _Parts, images: torch.Tensor, labels: torch.Tensor,
                  attributes: torch.Tensor, amp: str) -> dict[str, torch.Tensor]:
    with autocast_context(parts.device, amp):
        output = parts.trained(images)
    return parts.criterion(to_float(output), labels, attributes)


def _backward(parts: _Parts, loss: torch.Tensor) -> None:
    parts.optimizer.zero_grad(set_to_none=True)
    scaler = parts.scaler
    (scaler.scale(loss) if scaler else loss).backward()
    distributed.average_gradients(parts.criterion.parameters(), parts.info)


def _optimizer_step(cfg: Config, parts: _Parts) -> None:
    scaler = parts.scaler
    if scaler:
        scaler.unscale_(parts.optimizer)
    if cfg.train.grad_clip > 0:
        nn.utils.clip_grad_norm_(parts.model.parameters(), cfg.train.grad_clip)
    if scaler:
        scaler.step(parts.optimizer)
        scaler.update()
    else:
        parts.optimizer.step()


def _grads_finite(parts: _Parts) -> bool:
    """Whether every gradient is finite (fp16 skips this: its GradScaler handles overflow)."""
    if parts.scaler is not None:
        return True
    grads = [p.grad for group in parts.optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    return not grads or bool(torch.isfinite(nn.utils.get_total_norm(grads)).item())


def _step_finite(terms: dict[str, torch.Tensor], parts: _Parts) -> bool:
    """Loss and gradients finite on every rank (one agreed answer, so all ranks act alike)."""
    mine = bool(torch.isfinite(terms["loss"]).item()) and _grads_finite(parts)
    return distributed.all_true(mine, parts.info)


def _raise_nonfinite(cfg: Config, terms: dict[str, torch.Tensor], epoch: int, step: int,
                     out: Path, parts: _Parts) -> None:
    values = {k: float(v.detach()) for k, v in terms.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    rescue = out / "before_nonfinite.pt"
    if parts.info.is_main:
        save_checkpoint(rescue, {"model": parts.model.state_dict(), "config": to_dict(cfg),
                                 "model_config": parts.model.config, "epoch": epoch})
    where = f" (rank {parts.info.rank})" if parts.info.enabled else ""
    if bad:
        what, detail = "loss", bad
    elif not _grads_finite(parts):
        what, detail = "gradients", f"loss {values['loss']:.4g}, some gradients not finite"
    else:
        what, detail = "loss", "on another rank"
    tried = " (the bf16 step was recomputed in float32 and failed too)" \
        if cfg.train.amp == "bf16" else ""
    raise NonFiniteLossError(
        f"non-finite {what}{where} at epoch {epoch + 1}, step {step + 1}: {detail}{tried}. "
        "Training stopped; the "
        f"weights before this step are in {rescue}, the last complete epoch in {out / 'last.pt'}. "
        "Try a lower optim.lr or set train.grad_clip (e.g. --set train.grad_clip=5).")


def _restore(model: nn.Module, saved: list[torch.Tensor]) -> None:
    """Put back the buffers (batch-norm statistics) a failed forward pass updated."""
    with torch.no_grad():
        for buffer, value in zip(model.buffers(), saved):
            buffer.copy_(value)


def _train_step(cfg: Config, parts: _Parts, batch: dict[str, Any], epoch: int, step: int,
                out: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """One optimisation step on ``batch``; returns the loss terms and whether the step was
    recomputed in float32.

    Under bf16 a step whose loss or gradients are not finite is recomputed in float32 from the
    same weights and batch-norm statistics (bf16 kernels have returned NaN for finite inputs on
    Intel AMX, see :mod:`attreid.utils.backend`); so bf16 is never the reason a run stops. A float32
    step that is not finite raises :class:`NonFiniteLossError` before the weights, optimizer
    state or batch-norm statistics change.
    """
    images = batch["image"].to(parts.device, non_blocking=True)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = batch["label"].to(parts.device)
    attributes = batch["attributes"].to(parts.device)
    saved = [b.detach().clone() for b in parts.model.buffers()]  # batch-norm statistics
    terms = _forward_loss(parts, images, labels, attributes, cfg.train.amp)
    _backward(parts, terms["loss"])
    finite = _step_finite(terms, parts)
    redone = cfg.train.amp == "bf16" and not finite
    if redone:
        _restore(parts.model, saved)
        terms = _forward_loss(parts, images, labels, attributes, "none")
        _backward(parts, terms["loss"])
        finite = _step_finite(terms, parts)
    if not finite:
        _restore(parts.model, saved)
        _raise_nonfinite(cfg, terms, epoch, step, out, parts)
    _optimizer_step(cfg, parts)
    return terms, redone


def train_epoch(cfg: Config, parts: _Parts, loader: Iterable[dict[str, Any]], epoch: int,
                out: Path,
                on_step: Callable[[int, dict[str, float]], None] | None = None
                ) -> dict[str, float]:
    """One epoch of training; returns the mean of each loss term and the images/s (over all
    ranks in a distributed run); under bf16 also ``bf16_steps_in_fp32``, the steps that were
    recomputed in float32 because bf16 gave non-finite values."""
    parts.model.train()
    sums: dict[str, float] = {}
    images_seen, redone, start = 0, 0, time.perf_counter()
    for step, batch in enumerate(loader):
        terms, again = _train_step(cfg, parts, batch, epoch, step, out)
        redone += again
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        images_seen += len(batch["image"])
        if on_step:
            shown = {k: float(terms[k].detach()) for k in ("loss", "reid", "attr")}
            on_step(step, {**shown, "img/s": images_seen / (time.perf_counter() - start)})
    steps = max(1, len(loader))
    result = distributed.mean_over_ranks({k: v / steps for k, v in sums.items()}, parts.info)
    result["images_per_s"] = distributed.sum_over_ranks(
        images_seen / (time.perf_counter() - start), parts.info)
    if cfg.train.amp == "bf16":
        result["bf16_steps_in_fp32"] = redone  # the same steps on every rank
    return result


def validate(cfg: Config, model: nn.Module, val: EvaluationSet, train_targets: np.ndarray,
             device: torch.device, info: DistInfo = SINGLE) -> dict[str, Any] | None:
    """Attribute accuracy per task (+ majority baseline) and re-ID CMC/mAP on ``val``.

    In a distributed run every rank embeds every W-th image and rank 0 scores the gathered
    features (the other ranks return None): the same numbers, W times faster to extract."""
    kwargs = dict(transform=transform_config(cfg), device=device, amp=cfg.train.amp,
                  channels_last=cfg.train.channels_last, flip=cfg.train.flip_test,
                  workers=cfg.data.workers)
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


def _state(cfg: Config, parts: _Parts, epoch: int, label_of: dict[int, int],
           best: dict[str, Any], metrics: dict[str, Any] | None,
           train_targets: np.ndarray) -> dict[str, Any]:
    """The checkpoint's contents. ``trained_tasks``: the tasks (in the order of
    :data:`attreid.schema.TASK_NAMES`) with at least one known label in ``train_targets``
    (N_ids, 12): the others' heads never saw a label, and consumers (predict, the search index,
    the service) treat their outputs as unknown. A checkpoint without the key (older ones)
    trained all tasks."""
    return {"model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "criterion": parts.criterion.state_dict(), "epoch": epoch, "config": to_dict(cfg),
            "model_config": parts.model.config, "label_of": label_of, "best": best,
            "metrics": metrics, "attreid_version": __version__,
            "trained_tasks": list(labelled_tasks(train_targets)),
            "scaler": parts.scaler.state_dict() if parts.scaler else None}


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _trim_jsonl(path: Path, epochs: int) -> None:
    """Drop log lines of epochs after ``epochs`` (written by a run interrupted later), and a line
    cut short by a kill in the middle of its write."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line
        if record.get("epoch", 0) <= epochs:
            kept.append(line)
    atomic_write_text(path, "".join(ln + "\n" for ln in kept))


def _remove_stale_temporaries(out: Path) -> None:
    """Temporary files of atomic writes that a killed run left behind (``.<name>.*.tmp``)."""
    for tmp in out.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def _resume(out: Path, cfg: Config, parts: _Parts) -> tuple[int, dict[str, Any]]:
    state = load_checkpoint(out / "last.pt")
    differences = config_differences(state["config"], to_dict(cfg))
    if differences:
        raise ConfigError(f"{out / 'last.pt'}: cannot resume, the config differs from the "
                          f"checkpoint's in {len(differences)} key(s): {'; '.join(differences)}. "
                          "Resume with the checkpoint's settings (its config.yaml), or train into "
                          "another --out")
    load_model_weights(parts.model, state["model"], out / "last.pt")
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.criterion.load_state_dict(state["criterion"])
    if parts.scaler and state.get("scaler"):
        parts.scaler.load_state_dict(state["scaler"])
    return int(state["epoch"]), state.get("best") or {}


def setup(cfg: Config, bundle: DataBundle, info: DistInfo = SINGLE) -> _Parts:
    """Build model, loss and optimizer for ``cfg`` on its device, seeded by ``train.seed``.
    In a distributed run the model is wrapped in DistributedDataParallel (its batch norms
    synchronised with ``train.sync_bn``) and each rank uses the GPU of its local rank."""
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    model = build_model(**_model_kwargs(cfg, bundle.train.num_classes))
    if info.enabled and cfg.train.sync_bn:
        model = distributed.convert_sync_batchnorm(model, device.type)
    model = model.to(device)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = build_criterion(cfg, bundle.train_targets, info).to(device)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.amp == "fp16" else None
    ddp = None
    if info.enabled:
        idle_head = cfg.model.id_head and cfg.loss.id_weight <= 0  # an ID head no loss uses
        ddp = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=idle_head)
    return _Parts(model, criterion, build_optimizer(cfg, model, criterion), device, scaler,
                  info, ddp)


def train(cfg: Config, resume: bool = False, log: Log = print,
          on_step: Callable[[int, int, int, dict[str, float]], None] | None = None
          ) -> TrainResult:
    """Train ``cfg``: write ``last.pt``, ``best.pt``, ``config.yaml`` and ``metrics.jsonl``
    to ``cfg.train.out``. With ``resume`` continue from ``last.pt`` exactly.

    Args:
        on_step: called with (epoch, step, steps per epoch, running values) after each step.

    Run under torchrun (``WORLD_SIZE`` > 1) it trains with DistributedDataParallel, one process
    per rank (see :mod:`attreid.training.distributed`); only rank 0 logs and writes files.
    """
    joined = not torch.distributed.is_initialized()
    info = distributed.init(resolve_device(cfg.train.device).type)
    try:
        return _train(cfg, resume, log if info.is_main else _quiet,
                      on_step if info.is_main else None, info)
    finally:
        if joined:
            distributed.shutdown()


def _quiet(_: str) -> None:
    pass


def resolve_precision(cfg: Config, device: torch.device, log: Log = print) -> Config:
    """``cfg`` with ``train.amp`` resolved for ``device`` (:func:`attreid.inference.extraction.resolve_amp`:
    ``auto`` is bf16 on CUDA and on CPUs with native bf16, else float32), checked before any
    data is read; logs the choice, and a warning for bf16 on a CPU that only emulates it.

    Raises:
        ConfigError: an unknown mode, or fp16 off CUDA (CPU autocast is bf16 only).
    """
    amp = cfg.train.amp
    try:
        resolved = resolve_amp(amp, device)
    except ValueError as exc:
        raise ConfigError(f"train.amp: {exc}") from None
    if resolved == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 needs a CUDA device; use bf16 on {device.type} "
                          "(--set train.amp=bf16), auto or none")
    names = {"none": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}
    how = f" (train.amp=auto on {device.type})" if amp == "auto" else ""
    log(f"precision: {names[resolved]}{how}")
    if resolved == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        log("warning: train.amp=bf16 on a CPU without native bf16 instructions (AVX512_BF16 "
            "or AMX, or ONEDNN_MAX_CPU_ISA excludes them): bf16 is emulated here and can be "
            "several times slower than float32; --set train.amp=auto picks float32 here")
    return with_updates(cfg, train={"amp": resolved})


def _train(cfg: Config, resume: bool, log: Log,
           on_step: Callable[[int, int, int, dict[str, float]], None] | None,
           info: DistInfo) -> TrainResult:
    for warning in check_training_config(cfg, info.world_size):
        log(f"warning: {warning}")
    cfg = absolute_paths(resolve_precision(cfg, resolve_device(cfg.train.device), log))
    out = Path(cfg.train.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle = build_data(cfg)
    for warning in check_bundle(cfg, bundle):
        log(f"warning: {warning}")
    parts = setup(cfg, bundle, info)
    start, best = _resume(out, cfg, parts) if resume else (0, {})
    if info.is_main:
        _remove_stale_temporaries(out)
        _trim_jsonl(out / "metrics.jsonl", start) if resume else (out / "metrics.jsonl").unlink(
            missing_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    result = TrainResult(out=out, epochs=start, best=best)
    writer = _tensorboard(out) if cfg.train.tensorboard and info.is_main else None
    cache = _ranked_cache(cfg, bundle, log, info) if start < cfg.optim.epochs else None
    for epoch in range(start, cfg.optim.epochs):
        record = _run_epoch(cfg, parts, bundle, epoch, out, on_step, cache)
        if info.is_main:
            # the log line first: a kill before last.pt is written makes a resume redo this
            # epoch and drop the line (_trim_jsonl); the other order would lose it
            _append_jsonl(out / "metrics.jsonl", record)
            best = _checkpoint(cfg, parts, bundle, epoch, record, best, out)
            if writer:
                _write_scalars(writer, record, epoch + 1)
        distributed.barrier(info)  # last.pt is complete before any rank goes on
        log(_format_epoch(record))
        result.history.append(record)
        result.epochs, result.best = epoch + 1, best
    if writer:
        writer.close()
    return result


def _ranked_cache(cfg: Config, bundle: DataBundle, log: Log, info: DistInfo
                  ) -> ImageCache | None:
    """The image cache; with a shared ``data.cache_dir`` rank 0 decodes and saves it first and
    the other ranks load its file."""
    if not cfg.data.cache_dir or not info.enabled:
        return build_cache(cfg, bundle.train, log)
    cache = build_cache(cfg, bundle.train, log) if info.is_main else None
    distributed.barrier(info)
    return cache if info.is_main else build_cache(cfg, bundle.train, log)


def _tensorboard(out: Path) -> Any:
    """A TensorBoard writer when the optional ``tensorboard`` package is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(out / "tensorboard"))


def _write_scalars(writer: Any, record: dict[str, Any], epoch: int, prefix: str = "") -> None:
    for key, value in record.items():
        if isinstance(value, dict):
            _write_scalars(writer, value, epoch, f"{prefix}{key}/")
        elif isinstance(value, (int, float)) and key != "epoch":
            writer.add_scalar(prefix + key, value, epoch)


def _run_epoch(cfg: Config, parts: _Parts, bundle: DataBundle, epoch: int, out: Path,
               on_step: Callable[[int, int, int, dict[str, float]], None] | None,
               cache: ImageCache | None = None) -> dict[str, Any]:
    torch.manual_seed(_epoch_seed(cfg.train.seed, epoch))
    factor = lr_factor(cfg, epoch)
    for group in parts.optimizer.param_groups:
        group["lr"] = cfg.optim.lr * factor
    loader = make_loader(cfg, bundle.train, epoch, cache, parts.device, parts.info)
    step_cb = (lambda step, values: on_step(epoch, step, len(loader), values)) \
        if on_step else None
    record: dict[str, Any] = {"epoch": epoch + 1, "lr": cfg.optim.lr * factor}
    record["train"] = train_epoch(cfg, parts, loader, epoch, out, step_cb)
    last = epoch + 1 == cfg.optim.epochs
    due = (epoch + 1) % cfg.train.eval_every == 0 or last
    if bundle.val is not None and due:
        val = validate(cfg, parts.model, bundle.val, bundle.train_targets, parts.device,
                       parts.info)
        if val is not None:  # rank 0
            record["val"] = val
    return record


def _checkpoint(cfg: Config, parts: _Parts, bundle: DataBundle, epoch: int,
                record: dict[str, Any], best: dict[str, Any], out: Path) -> dict[str, Any]:
    metrics = record.get("val")
    if metrics is not None and (not best or selection_score(metrics) > best["score"]):
        best = {"epoch": epoch + 1, "score": selection_score(metrics), "mAP": metrics["mAP"],
                "mean_accuracy": metrics.get("mean_accuracy")}
        save_checkpoint(out / "best.pt", _state(cfg, parts, epoch + 1,
                                                bundle.train.label_of, best, metrics,
                                                bundle.train_targets))
    save_checkpoint(out / "last.pt", _state(cfg, parts, epoch + 1, bundle.train.label_of,
                                            best, metrics, bundle.train_targets))
    return best


def _format_epoch(record: dict[str, Any]) -> str:
    t = record["train"]
    text = (f"epoch {record['epoch']}: loss {t['loss']:.4f} (reid {t.get('reid', 0):.4f}, "
            f"attr {t.get('attr', 0):.4f}) {t['images_per_s']:.0f} img/s")
    if t.get("bf16_steps_in_fp32"):
        text += f" ({t['bf16_steps_in_fp32']} bf16 step(s) non-finite, recomputed in float32)"
    if "val" in record:
        v = record["val"]
        text += f" | val mAP {v['mAP']:.2%} rank-1 {v['rank1']:.2%}"
        if "mean_accuracy" in v:
            text += f" attr acc {v['mean_accuracy']:.2%}"
    return text
