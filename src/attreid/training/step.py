"""One training step and one epoch, with the NaN guard: a bf16 step whose loss or gradients are
not finite is recomputed in float32 from the same weights, optimizer state and BN statistics; a
float32 one raises :class:`NonFiniteLossError` before the weights change."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from attreid.config import (
    Config,
    to_dict,
)
from attreid.errors import AttreidError
from attreid.inference.extraction import autocast_context, to_float
from attreid.training import distributed
from attreid.training.distributed import SINGLE, DistInfo
from attreid.training.losses import MultiTaskLoss
from attreid.utils.checkpoint import save_checkpoint


class NonFiniteLossError(AttreidError, RuntimeError):
    """The loss became NaN or infinite; the message says where and what was saved."""


@dataclass
class TrainingParts:
    model: nn.Module
    criterion: MultiTaskLoss
    optimizer: torch.optim.Optimizer
    device: torch.device
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    info: DistInfo = SINGLE
    ddp: nn.Module | None = None  # the DistributedDataParallel wrapper of model, when used
    compiled: nn.Module | None = None  # torch.compile of ddp or model (train.compile)

    @property
    def trained(self) -> nn.Module:
        """The module to call in training steps: compiled (train.compile), else DDP when
        distributed, else the model."""
        if self.compiled is not None:
            return self.compiled
        return self.ddp if self.ddp is not None else self.model


def forward_loss(parts: TrainingParts, images: torch.Tensor, labels: torch.Tensor,
                 attributes: torch.Tensor, amp: str) -> dict[str, torch.Tensor]:
    """The loss terms of one batch (``loss`` and its parts), the model under ``amp`` autocast."""
    with autocast_context(parts.device, amp):
        output = parts.trained(images)
    return parts.criterion(to_float(output), labels, attributes)


def backward(parts: TrainingParts, loss: torch.Tensor) -> None:
    """Fresh gradients of ``loss`` (scaled under fp16); the loss weights' averaged over ranks."""
    parts.optimizer.zero_grad(set_to_none=True)
    scaler = parts.scaler
    (scaler.scale(loss) if scaler else loss).backward()
    distributed.average_gradients(parts.criterion.parameters(), parts.info)


def _optimizer_step(cfg: Config, parts: TrainingParts) -> None:
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


def _grads_finite(parts: TrainingParts) -> bool:
    """Whether every gradient is finite (fp16 skips this: its GradScaler handles overflow)."""
    if parts.scaler is not None:
        return True
    grads = [p.grad for group in parts.optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    return not grads or bool(torch.isfinite(nn.utils.get_total_norm(grads)).item())


def _step_finite(terms: dict[str, torch.Tensor], parts: TrainingParts) -> bool:
    """Loss and gradients finite on every rank (one agreed answer, so all ranks act alike)."""
    mine = bool(torch.isfinite(terms["loss"]).item()) and _grads_finite(parts)
    return distributed.all_true(mine, parts.info)


def save_rescue(cfg: Config, parts: TrainingParts, epoch: int, out: Path) -> Path:
    """The current weights to ``out/before_nonfinite.pt`` (rank 0 writes), for the error that
    stops a non-finite run; returns the path."""
    rescue = out / "before_nonfinite.pt"
    if parts.info.is_main:
        save_checkpoint(rescue, {"model": parts.model.state_dict(), "config": to_dict(cfg),
                                 "model_config": parts.model.config, "epoch": epoch})
    return rescue


def on_device(cfg: Config, parts: TrainingParts, batch: dict[str, Any]
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, attributes) of ``batch`` on the training device (images channels-last
    when ``train.channels_last``); copies are non-blocking."""
    images = batch["image"].to(parts.device, non_blocking=True)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return (images, batch["label"].to(parts.device, non_blocking=True),
            batch["attributes"].to(parts.device, non_blocking=True))


def epoch_result(means: dict[str, float], images_seen: int, seconds: float,
                 info: DistInfo) -> dict[str, float]:
    """An epoch's record: the loss means (averaged over ranks), images/s (summed over ranks)
    and this process's ``seconds``."""
    result = distributed.mean_over_ranks(means, info)
    result["images_per_s"] = distributed.sum_over_ranks(images_seen / seconds, info)
    result["seconds"] = seconds
    return result


def _raise_nonfinite(cfg: Config, terms: dict[str, torch.Tensor], epoch: int, step: int,
                     out: Path, parts: TrainingParts) -> None:
    values = {k: float(v.detach()) for k, v in terms.items()}
    bad = {k: v for k, v in values.items() if not math.isfinite(v)}
    rescue = save_rescue(cfg, parts, epoch, out)
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


def train_step(cfg: Config, parts: TrainingParts, batch: dict[str, Any], epoch: int, step: int,
                out: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """One optimisation step on ``batch``; returns the loss terms and whether the step was
    recomputed in float32.

    Under bf16 a step whose loss or gradients are not finite is recomputed in float32 from the
    same weights and batch-norm statistics (bf16 kernels have returned NaN for finite inputs on
    Intel AMX, see :mod:`attreid.utils.backend`); so bf16 is never the reason a run stops. A float32
    step that is not finite raises :class:`NonFiniteLossError` before the weights, optimizer
    state or batch-norm statistics change.
    """
    images, labels, attributes = on_device(cfg, parts, batch)
    saved = [b.detach().clone() for b in parts.model.buffers()]  # batch-norm statistics
    terms = forward_loss(parts, images, labels, attributes, cfg.train.amp)
    backward(parts, terms["loss"])
    finite = _step_finite(terms, parts)
    redone = cfg.train.amp == "bf16" and not finite
    if redone:
        _restore(parts.model, saved)
        terms = forward_loss(parts, images, labels, attributes, "none")
        backward(parts, terms["loss"])
        finite = _step_finite(terms, parts)
    if not finite:
        _restore(parts.model, saved)
        _raise_nonfinite(cfg, terms, epoch, step, out, parts)
    _optimizer_step(cfg, parts)
    return terms, redone


def train_epoch(cfg: Config, parts: TrainingParts, loader: Iterable[dict[str, Any]], epoch: int,
                out: Path,
                on_step: Callable[[int, dict[str, float]], None] | None = None
                ) -> dict[str, float]:
    """One epoch of training; returns the mean of each loss term, the images/s (over all
    ranks in a distributed run) and this process's ``seconds``; under bf16 also
    ``bf16_steps_in_fp32``, the steps that were recomputed in float32 because bf16 gave
    non-finite values."""
    parts.model.train()
    sums: dict[str, float] = {}
    images_seen, redone, start = 0, 0, time.perf_counter()
    for step, batch in enumerate(loader):
        terms, again = train_step(cfg, parts, batch, epoch, step, out)
        redone += again
        for name, value in terms.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
        images_seen += len(batch["image"])
        if on_step:
            shown = {k: float(terms[k].detach()) for k in ("loss", "reid", "attr")}
            on_step(step, {**shown, "img/s": images_seen / (time.perf_counter() - start)})
    steps = max(1, len(loader))
    result = epoch_result({k: v / steps for k, v in sums.items()}, images_seen,
                          time.perf_counter() - start, parts.info)
    if cfg.train.amp == "bf16":
        result["bf16_steps_in_fp32"] = redone  # the same steps on every rank
    return result
