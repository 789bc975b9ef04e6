"""Training steps that never make the host wait for the device (``train.sync_every`` > 1).

The per-step engine (:func:`attreid.training.step.train_epoch`) reads the loss and checks the
gradients on the host after every step. On a CPU that costs nothing; on a GPU each read waits
for every queued kernel, so the host cannot queue the next step while the GPU runs this one.
Here every step stays on the device:

* the loss terms add up in one device tensor, read every ``sync_every`` steps (and at the end
  of the epoch), when the progress callback gets their running means;
* whether a step is finite (loss and total gradient norm) is a device flag, and the step of a
  non-finite one is skipped by the fused optimizer itself (its ``found_inf`` input, as
  GradScaler uses it) while the batch-norm statistics the failed forward pass changed are put
  back with one ``torch.where`` per buffer dtype;
* skipped steps are counted (``nonfinite_steps_skipped`` in the epoch's record), and when every
  step between two reads was non-finite the run stops with
  :class:`~attreid.training.step.NonFiniteLossError`, the last good weights saved.

A skipped bf16 step is not recomputed in float32 as the per-step engine does: that needs the
host to know at once. bf16 on a GPU does not have the CPU AMX kernels' NaN fault
(:mod:`attreid.utils.backend`), so a skip there means the run itself diverged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

from attreid.config import Config
from attreid.training import distributed
from attreid.training.step import (
    NonFiniteLossError,
    TrainingParts,
    backward,
    epoch_result,
    forward_loss,
    on_device,
    save_rescue,
)

CUDA_SYNC_EVERY = 50
"""``train.sync_every=0`` (auto) on CUDA: steps between host reads (progress every 50 steps)."""


def sync_interval(cfg: Config, device: torch.device) -> int:
    """Steps between the host's reads of the loss: ``train.sync_every``, or for 0 (auto)
    :data:`CUDA_SYNC_EVERY` on CUDA and 1 (every step) elsewhere."""
    if cfg.train.sync_every > 0:
        return cfg.train.sync_every
    return CUDA_SYNC_EVERY if device.type == "cuda" else 1


class BufferSnapshot:
    """The model's buffers (batch-norm statistics) saved before a step and put back, on the
    device and without a host read, when the step turns out non-finite."""

    def __init__(self, model: nn.Module) -> None:
        groups: dict[torch.dtype, list[torch.Tensor]] = {}
        for buffer in model.buffers():
            groups.setdefault(buffer.dtype, []).append(buffer)
        self.groups = list(groups.values())
        self.saved: list[torch.Tensor] = []

    def save(self) -> None:
        self.saved = [_flat(group) for group in self.groups]

    def restore_unless(self, ok: torch.Tensor) -> None:
        """Keep the buffers where ``ok`` (0-d bool tensor), else put the saved ones back."""
        with torch.no_grad():
            for group, saved in zip(self.groups, self.saved):
                kept = torch.where(ok, _flat(group), saved)
                parts = kept.split([b.numel() for b in group])
                torch._foreach_copy_(group, [p.view_as(b) for p, b in zip(parts, group)])


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _grad_norm(cfg: Config, parts: TrainingParts) -> torch.Tensor:
    """Total gradient norm (0-d, on the device), clipping to ``train.grad_clip`` when set."""
    params = [p for group in parts.optimizer.param_groups for p in group["params"]
              if p.grad is not None]
    if not params:
        return torch.zeros((), device=parts.device)
    if parts.scaler is not None:
        parts.scaler.unscale_(parts.optimizer)
    if cfg.train.grad_clip > 0:
        return nn.utils.clip_grad_norm_(params, cfg.train.grad_clip, foreach=True)
    return nn.utils.get_total_norm([p.grad for p in params], foreach=True)


def deferred_step(cfg: Config, parts: TrainingParts, batch: dict[str, Any],
                  snapshot: BufferSnapshot) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One step without a host read: returns the loss terms and whether the step was finite
    (0-d bool tensor, the same on every rank). A non-finite step leaves the weights, the
    optimizer state and the batch-norm statistics as they were. Needs a fused optimizer
    (:func:`attreid.training.builders.build_optimizer` with ``fused=True``)."""
    images, labels, attributes = on_device(cfg, parts, batch)
    snapshot.save()
    terms = forward_loss(parts, images, labels, attributes, cfg.train.amp)
    backward(parts, terms["loss"])
    norm = _grad_norm(cfg, parts)
    ok = distributed.all_true_tensor(torch.isfinite(terms["loss"]) & torch.isfinite(norm),
                                     parts.info)
    if parts.scaler is None:
        parts.optimizer.found_inf = (~ok).float()  # read by fused Adam/AdamW/SGD's kernels
        parts.optimizer.step()
    else:
        parts.scaler.step(parts.optimizer)
        parts.scaler.update()
    snapshot.restore_unless(ok)
    return terms, ok


def train_epoch_deferred(cfg: Config, parts: TrainingParts, loader: Iterable[dict[str, Any]],
                         epoch: int, out: Path,
                         on_step: Callable[[int, dict[str, float]], None] | None = None
                         ) -> dict[str, float]:
    """One epoch of :func:`deferred_step`; returns what
    :func:`attreid.training.step.train_epoch` returns (the means over the finite steps) and
    ``nonfinite_steps_skipped``. ``on_step`` is called every :func:`sync_interval` steps with
    the running means. Raises NonFiniteLossError when every step between two reads was
    non-finite."""
    parts.model.train()
    every, snapshot = sync_interval(cfg, parts.device), BufferSnapshot(parts.model)
    names: list[str] = []
    sums = good = torch.zeros((), device=parts.device)
    images_seen, done, read_at, start = 0, 0, 0, time.perf_counter()
    steps = len(loader)  # type: ignore[arg-type]
    for step, batch in enumerate(loader):
        terms, ok = deferred_step(cfg, parts, batch, snapshot)
        names = names or list(terms)
        stacked = torch.stack([terms[n].detach().float() for n in names])
        sums = sums + torch.where(ok, stacked, torch.zeros_like(stacked))
        good = good + ok
        images_seen += len(batch["image"])
        if (step + 1) % every and step + 1 != steps:
            continue
        now = int(good.item())  # the one host read of these steps
        if now == done:
            _raise_window(cfg, parts, epoch, read_at, step, out)
        done, read_at = now, step + 1
        if on_step:
            means = dict(zip(names, (sums / done).tolist()))
            shown = {k: means[k] for k in ("loss", "reid", "attr") if k in means}
            on_step(step, {**shown, "img/s": images_seen / (time.perf_counter() - start)})
    means = dict(zip(names, (sums / max(1, done)).tolist())) if names else {}
    result = epoch_result(means, images_seen, time.perf_counter() - start, parts.info)
    result["nonfinite_steps_skipped"] = steps - done
    return result


def _raise_window(cfg: Config, parts: TrainingParts, epoch: int, first: int, last: int,
                  out: Path) -> None:
    rescue = save_rescue(cfg, parts, epoch, out)
    raise NonFiniteLossError(
        f"non-finite loss or gradients in every step from {first + 1} to {last + 1} of epoch "
        f"{epoch + 1} (train.sync_every={sync_interval(cfg, parts.device)}); each was skipped, "
        f"so the weights are the last finite ones: saved in {rescue}, the last complete epoch "
        f"in {out / 'last.pt'}. Training stopped. Try a lower optim.lr or set "
        "train.grad_clip (e.g. --set train.grad_clip=5).")
