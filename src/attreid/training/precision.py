"""The precision of a training run: ``train.amp`` checked and resolved, by rule or by a short
measured probe on this machine.

``train.amp=auto`` is bf16 on CUDA (fp16 where the GPU has no bf16) and float32 on a CPU without
native bf16 instructions (emulated bf16 is several times slower, see
:mod:`attreid.utils.backend`). On a CPU with native bf16 (AVX512_BF16 or AMX) neither is always
faster: measured on the ``cpu`` preset's MobileNetV2, bf16 trains at 0.87x float32's speed on an
AMD EPYC (depthwise convolutions) and several times faster on an Intel Xeon (benchmarks/RESULTS.md).
So there :func:`probe_precision` times a few training steps of a copy of the model in each
precision on a synthetic batch of the run's shape (P x K images, H x W) and bf16 is used only
when it is finite and at least :data:`BF16_MARGIN` times as fast as float32. The copy is thrown
away and the global RNG restored, so the probe changes nothing of the run but its precision.
The choice is written into the run's ``config.yaml`` and checkpoints; a resumed run takes it
from ``last.pt`` instead of measuring again.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import torch
from torch import nn

from attreid.config import Config, ConfigError, with_updates
from attreid.inference.extraction import autocast_context, resolve_amp, to_float
from attreid.schema import TASKS
from attreid.utils.backend import cpu_bf16_native

BF16_MARGIN = 1.05
"""bf16 must train at least this many times as fast as float32 to be chosen by the probe:
float32 is the more exact of the two, so a tie goes to it."""

PROBE_ROUNDS = 2
PROBE_STEPS = 2
"""Timed steps per precision per round; rounds alternate the precisions (each precision's best
round counts), so a burst of other work on the machine hits both."""

NAMES = {"none": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}


def needs_probe(amp: str, device: torch.device) -> bool:
    """Whether ``train.amp=amp`` is settled by :func:`probe_precision` on ``device``: ``auto``
    on a CPU with native bf16 instructions."""
    return amp == "auto" and device.type == "cpu" and cpu_bf16_native()


def resolve_precision(cfg: Config, device: torch.device, log: Callable[[str], None] = print
                      ) -> Config:
    """``cfg`` with ``train.amp`` resolved for ``device`` by rule (see the module docstring),
    checked before any data is read; logs the choice, and a warning for bf16 on a CPU that only
    emulates it. ``auto`` on a CPU with native bf16 is left as ``auto``: the engine settles it
    with :func:`probe_precision` once the model is built.

    Raises:
        ConfigError: an unknown mode, or fp16 off CUDA (CPU autocast is bf16 only).
    """
    amp = cfg.train.amp
    try:
        resolved = resolve_amp(amp, device)
    except ValueError as exc:
        raise ConfigError(f"train.amp: {exc}") from None
    if needs_probe(amp, device):
        return cfg
    if resolved == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.amp=fp16 needs a CUDA device; use bf16 on {device.type} "
                          "(--set train.amp=bf16), auto or none")
    how = f" (train.amp=auto on {device.type})" if amp == "auto" else ""
    log(f"precision: {NAMES[resolved]}{how}")
    if resolved == "bf16" and device.type == "cpu" and not cpu_bf16_native():
        log("warning: train.amp=bf16 on a CPU without native bf16 instructions (AVX512_BF16 "
            "or AMX, or ONEDNN_MAX_CPU_ISA excludes them): bf16 is emulated here and can be "
            "several times slower than float32; --set train.amp=auto picks float32 here")
    return with_updates(cfg, train={"amp": resolved})


def _synthetic_batch(cfg: Config, device: torch.device, num_classes: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A P x K batch of the run's shape: images, identity labels, attribute labels."""
    gen = torch.Generator().manual_seed(0)
    p, k = cfg.data.p, cfg.data.k
    images = torch.randn(p * k, 3, cfg.data.height, cfg.data.width, generator=gen)
    labels = torch.arange(p).repeat_interleave(k) % max(1, num_classes)
    attributes = torch.stack([torch.randint(0, len(t.classes), (p * k,), generator=gen)
                              for t in TASKS], dim=1)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images.to(device), labels.to(device), attributes.to(device)


def _timed_steps(model: nn.Module, criterion: nn.Module, batch: tuple[torch.Tensor, ...],
                 device: torch.device, amp: str, steps: int) -> float | None:
    """Images/s of ``steps`` forward + backward passes under ``amp``; None when one is not
    finite (the optimizer update is the same float32 work in every precision, left out)."""
    images, labels, attributes = batch
    start = time.perf_counter()
    for _ in range(steps):
        model.zero_grad(set_to_none=True)
        with autocast_context(device, amp):
            output = model(images)
        loss = criterion(to_float(output), labels, attributes)["loss"]
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not torch.isfinite(loss) or not all(bool(g.isfinite().all()) for g in grads):
            return None
    return steps * len(images) / (time.perf_counter() - start)


def probe_precision(cfg: Config, model: nn.Module, criterion: nn.Module, device: torch.device,
                    num_classes: int) -> dict[str, float | None]:
    """Training images/s of a copy of ``model`` in float32 (``none``) and bf16 on ``device``
    (see the module docstring); None for a precision whose step was not finite."""
    twin, loss = copy.deepcopy(model).train(), copy.deepcopy(criterion)
    batch = _synthetic_batch(cfg, device, num_classes)
    rates: dict[str, float | None] = {"none": 0.0, "bf16": 0.0}
    with torch.random.fork_rng(devices=[]):
        for amp in rates:  # warm-up: oneDNN builds its kernels on the first call
            if _timed_steps(twin, loss, batch, device, amp, 1) is None:
                rates[amp] = None
        for _ in range(PROBE_ROUNDS):
            for amp, best in rates.items():
                if best is None:
                    continue
                rate = _timed_steps(twin, loss, batch, device, amp, PROBE_STEPS)
                rates[amp] = None if rate is None else max(best, rate)
    return rates


def choose_precision(rates: dict[str, float | None]) -> str:
    """``bf16`` when both were finite and bf16 ran at least :data:`BF16_MARGIN` times float32's
    rate, else ``none`` (float32; a float32 step that is not finite then stops the run with the
    engine's own error)."""
    fp32, bf16 = rates.get("none"), rates.get("bf16")
    if bf16 is not None and fp32 is not None and bf16 >= BF16_MARGIN * fp32:
        return "bf16"
    return "none"


def describe_probe(rates: dict[str, float | None], chosen: str) -> str:
    """``precision: float32 (train.amp=auto, measured on this CPU: float32 168 img/s, bf16 146
    img/s)``."""
    shown = ", ".join(f"{NAMES[amp].split()[0]} " + ("not finite" if rate is None else
                                                     f"{rate:.0f} img/s")
                      for amp, rate in rates.items())
    return f"precision: {NAMES[chosen]} (train.amp=auto, measured on this CPU: {shown})"
