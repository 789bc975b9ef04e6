"""The training engine: data, model, loss and optimizer from a Config; epochs with validation,
atomic checkpoints, exact resume, JSON-lines metrics and a NaN guard.

Resume is exact: every epoch reseeds torch (main process) and the DataLoader's generator from
``(seed, epoch)``, and the PK sampler draws from ``(seed, epoch)`` too, so epoch ``e`` sees the
same batches and augmentations whether or not the run was interrupted before it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

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
from attreid.data.cache import ImageCache
from attreid.metrics.selection import selection_score
from attreid.models import build_model
from attreid.schema import labelled_tasks
from attreid.training import distributed
from attreid.training.budget import EpochPlan, plan_epochs
from attreid.training.builders import (
    DataBundle,
    Log,
    build_cache,
    build_criterion,
    build_data,
    build_optimizer,
    check_bundle,
    epoch_seed,
    lr_factor,
    make_loader,
    model_kwargs,
)
from attreid.training.checks import check_training_config
from attreid.training.deferred import sync_interval, train_epoch_deferred
from attreid.training.distributed import SINGLE, DistInfo
from attreid.training.precision import (
    NAMES,
    choose_precision,
    describe_probe,
    needs_probe,
    probe_precision,
    resolve_precision,
)
from attreid.training.step import TrainingParts, train_epoch
from attreid.training.validation import estimate_validation_s, validate
from attreid.utils.backend import resolve_device
from attreid.utils.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from attreid.utils.files import atomic_write_text, output_folder


@dataclass
class TrainResult:
    """What :func:`train` returns: the output folder, the epochs run and the last metrics."""

    out: Path
    epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=dict)


def _state(cfg: Config, parts: TrainingParts, epoch: int, label_of: dict[int, int],
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


def _resume(out: Path, cfg: Config, parts: TrainingParts
            ) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Load ``last.pt`` into ``parts``; returns its epoch, best record and config."""
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
    return int(state["epoch"]), state.get("best") or {}, state["config"]


def setup(cfg: Config, bundle: DataBundle, info: DistInfo = SINGLE) -> TrainingParts:
    """Build model, loss and optimizer for ``cfg`` on its device, seeded by ``train.seed``.
    In a distributed run the model is wrapped in DistributedDataParallel (its batch norms
    synchronised with ``train.sync_bn``) and each rank uses the GPU of its local rank."""
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    model = build_model(**model_kwargs(cfg, bundle.train.num_classes))
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
    fused = sync_interval(cfg, device) > 1 or device.type == "cuda"
    optimizer = build_optimizer(cfg, model, criterion, fused=fused)
    compiled = None
    if cfg.train.compile != "none":
        compiled = torch.compile(ddp if ddp is not None else model, mode=cfg.train.compile)
    return TrainingParts(model, criterion, optimizer, device, scaler, info, ddp, compiled)


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


def _train(cfg: Config, resume: bool, log: Log,
           on_step: Callable[[int, int, int, dict[str, float]], None] | None,
           info: DistInfo) -> TrainResult:
    started = time.perf_counter()
    for warning in check_training_config(cfg, info.world_size):
        log(f"warning: {warning}")
    cfg = absolute_paths(resolve_precision(cfg, resolve_device(cfg.train.device), log))
    out = Path(cfg.train.out)
    with output_folder(out):  # removed again if the data or the resume is refused
        bundle = build_data(cfg)
        for warning in check_bundle(cfg, bundle):
            log(f"warning: {warning}")
        parts = setup(cfg, bundle, info)
        start, best, saved = _resume(out, cfg, parts) if resume else (0, {}, None)
    cfg = _settle_plan(cfg, parts, bundle, saved, start, log)
    if info.is_main:
        _remove_stale_temporaries(out)
        _trim_jsonl(out / "metrics.jsonl", start) if resume else (out / "metrics.jsonl").unlink(
            missing_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))
    result = TrainResult(out=out, epochs=start, best=best)
    writer = _tensorboard(out) if cfg.train.tensorboard and info.is_main else None
    cache = (_ranked_cache(cfg, bundle, log, info, parts.device)
             if start < cfg.optim.epochs else None)
    epoch = start
    while epoch < cfg.optim.epochs:
        record = _run_epoch(cfg, parts, bundle, epoch, out, on_step, cache)
        if epoch == 0 and cfg.train.time_budget_min > 0:
            cfg, plan = _plan(cfg, parts, bundle, record, time.perf_counter() - started, log)
            record["plan"] = plan.as_dict()
            if info.is_main:
                atomic_write_text(out / "config.yaml", dump_yaml(cfg))
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
        epoch += 1
    if writer:
        writer.close()
    return result


def _settle_plan(cfg: Config, parts: TrainingParts, bundle: DataBundle,
                 saved: dict[str, Any] | None, start: int, log: Log) -> Config:
    """``cfg`` with what this machine decides: ``train.amp=auto`` by the probe
    (:mod:`attreid.training.precision`) and, for a time budget, the planned epochs. A resumed
    run takes both from its checkpoint's config instead, so it goes on with the same recipe."""
    if saved is not None and cfg.train.amp == "auto":
        amp = saved["train"]["amp"]
        log(f"precision: {NAMES.get(amp, amp)} (train.amp=auto, as measured when the run "
            "started)")
        cfg = with_updates(cfg, train={"amp": amp})
    if saved is not None and start > 0 and cfg.train.time_budget_min > 0:
        epochs = int(saved["optim"]["epochs"])
        log(f"time budget: {epochs} epoch(s), as planned after epoch 1")
        cfg = with_updates(cfg, optim={"epochs": epochs})
    if needs_probe(cfg.train.amp, parts.device):
        rates = probe_precision(cfg, parts.model, parts.criterion, parts.device,
                                bundle.train.num_classes)
        chosen = choose_precision(rates)
        chosen = "bf16" if distributed.from_rank0(chosen == "bf16", parts.info) else "none"
        log(describe_probe(rates, chosen))
        cfg = with_updates(cfg, train={"amp": chosen})
    return cfg


def _plan(cfg: Config, parts: TrainingParts, bundle: DataBundle, record: dict[str, Any],
          elapsed_s: float, log: Log) -> tuple[Config, EpochPlan]:
    """After epoch 1: the epochs that fit ``train.time_budget_min`` (rank 0's plan on every
    rank); validates epoch 1 too when it is the only one that fits."""
    epoch_s = record["train"]["seconds"]
    validation_s = estimate_validation_s(cfg, parts.model, bundle.val, parts.device, parts.info)
    plan = plan_epochs(cfg.train.time_budget_min * 60, elapsed_s, epoch_s, validation_s,
                       cfg.optim.epochs, cfg.train.eval_every, "val" in record)
    epochs = int(distributed.from_rank0(plan.epochs, parts.info))
    log(plan.describe())
    cfg = with_updates(cfg, optim={"epochs": epochs})
    if epochs == 1 and "val" not in record and bundle.val is not None:
        val = validate(cfg, parts.model, bundle.val, bundle.train_targets, parts.device,
                       parts.info)
        if val is not None:
            record["val"] = val
    return cfg, plan


def _ranked_cache(cfg: Config, bundle: DataBundle, log: Log, info: DistInfo,
                  device: torch.device = torch.device("cpu")) -> ImageCache | None:
    """The image cache (on ``device`` when it is a GPU); with a shared ``data.cache_dir`` rank 0
    decodes and saves it first and the other ranks load its file."""
    if not cfg.data.cache_dir or not info.enabled:
        return build_cache(cfg, bundle.train, log, device)
    cache = build_cache(cfg, bundle.train, log, device) if info.is_main else None
    distributed.barrier(info)
    return cache if info.is_main else build_cache(cfg, bundle.train, log, device)


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


def _run_epoch(cfg: Config, parts: TrainingParts, bundle: DataBundle, epoch: int, out: Path,
               on_step: Callable[[int, int, int, dict[str, float]], None] | None,
               cache: ImageCache | None = None) -> dict[str, Any]:
    torch.manual_seed(epoch_seed(cfg.train.seed, epoch))
    factor = lr_factor(cfg, epoch)
    for group in parts.optimizer.param_groups:
        group["lr"] = cfg.optim.lr * factor
    loader = make_loader(cfg, bundle.train, epoch, cache, parts.device, parts.info)
    step_cb = (lambda step, values: on_step(epoch, step, len(loader), values)) \
        if on_step else None
    record: dict[str, Any] = {"epoch": epoch + 1, "lr": cfg.optim.lr * factor}
    run = train_epoch_deferred if sync_interval(cfg, parts.device) > 1 else train_epoch
    record["train"] = run(cfg, parts, loader, epoch, out, step_cb)
    last = epoch + 1 == cfg.optim.epochs
    due = (epoch + 1) % cfg.train.eval_every == 0 or last
    if bundle.val is not None and due:
        val = validate(cfg, parts.model, bundle.val, bundle.train_targets, parts.device,
                       parts.info)
        if val is not None:  # rank 0
            record["val"] = val
    return record


def _checkpoint(cfg: Config, parts: TrainingParts, bundle: DataBundle, epoch: int,
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
    if t.get("nonfinite_steps_skipped"):
        text += f" ({t['nonfinite_steps_skipped']} non-finite step(s) skipped)"
    if t.get("bf16_steps_in_fp32"):
        text += f" ({t['bf16_steps_in_fp32']} bf16 step(s) non-finite, recomputed in float32)"
    if "val" in record:
        v = record["val"]
        text += f" | val mAP {v['mAP']:.2%} rank-1 {v['rank1']:.2%}"
        if "mean_accuracy" in v:
            text += f" attr acc {v['mean_accuracy']:.2%}"
    return text
