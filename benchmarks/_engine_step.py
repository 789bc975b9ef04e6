"""The engine's full training step against the bare step of the same model, on any device
(``python benchmarks/train_throughput.py --engine``; on CUDA this is the only mode).

    bare          random batch already on the device (the run's shape); forward under the run's
                  precision, all the run's losses, backward, the run's optimizer: no data, no
                  guard, no logging
    engine        what ``attreid train`` runs per epoch (:func:`attreid.training.engine`'s
                  ``_run_epoch`` minus validation): the PK sampler, the image cache (on the GPU
                  there), the batch augmentation, the same step with its NaN guard, loss
                  bookkeeping and the progress callback

Both on one model, criterion and optimizer (built by the engine's ``setup`` from a preset), for
each ``--compile`` mode in turn. Time is taken over whole blocks of steps with the device
synchronised at both ends (a per-step wall clock means nothing on an asynchronous GPU); each row
is the median of ``--repeats`` interleaved rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch

from attreid.config import Config, load_config
from attreid.data.cache import ImageCache
from attreid.data.load import load_dataset
from attreid.data.synth import generate
from attreid.inference.extraction import autocast_context, to_float
from attreid.schema import TASKS
from attreid.training.builders import build_cache, build_data, make_loader
from attreid.training.deferred import sync_interval, train_epoch_deferred
from attreid.training.engine import setup
from attreid.training.step import TrainingParts, train_epoch


def config(args: argparse.Namespace, root: Path, out: Path, compile_mode: str) -> Config:
    """The preset with the benchmark's size, batch, precision and compile mode."""
    overrides = [
        f"data.root={root}", f"data.height={args.height}", f"data.width={args.width}",
        f"data.p={args.p}", f"data.k={args.k}", f"data.batches_per_epoch={args.steps}",
        "data.cache=true", "data.workers=0", f"train.device={args.device}",
        f"train.amp={args.amp}", f"train.channels_last={str(args.channels_last).lower()}",
        f"train.compile={compile_mode}", f"train.sync_every={args.sync_every}",
        f"train.out={out}", "train.tensorboard=false", "train.time_budget_min=0",
        "optim.warmup_epochs=0", "model.weights=random", *args.set]
    return load_config(args.preset, overrides)


def dataset_root(args: argparse.Namespace, tmp: Path) -> Path:
    """``--data`` (e.g. Market-1501), else a synthetic Market-1501 layout of ``--ids`` ids."""
    if args.data:
        load_dataset(args.data)  # fails early, naming the folder
        return Path(args.data)
    generate(tmp / "synth", ids=args.ids, seed=0, layout="market")
    return tmp / "synth"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def random_batch(cfg: Config, parts: TrainingParts) -> dict[str, torch.Tensor]:
    """One P x K batch of the run's shape on the device: images (B, 3, H, W), label (B,),
    attributes (B, 12)."""
    p, k, device = cfg.data.p, cfg.data.k, parts.device
    g = torch.Generator().manual_seed(0)
    images = torch.randn(p * k, 3, cfg.data.height, cfg.data.width, generator=g)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    attributes = torch.stack([torch.randint(0, t.num_classes, (p * k,), generator=g)
                              for t in TASKS], dim=1)
    return {"image": images.to(device), "label": torch.arange(p).repeat_interleave(k).to(device),
            "attributes": attributes.to(device)}


def bare_steps(cfg: Config, parts: TrainingParts, batch: dict[str, torch.Tensor],
               steps: int) -> float:
    """Seconds for ``steps`` bare steps (device synchronised at both ends)."""
    parts.model.train()
    sync(parts.device)
    start = time.perf_counter()
    for _ in range(steps):
        with autocast_context(parts.device, cfg.train.amp):
            output = parts.trained(batch["image"])
        loss = parts.criterion(to_float(output), batch["label"], batch["attributes"])["loss"]
        parts.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        parts.optimizer.step()
    sync(parts.device)
    return time.perf_counter() - start


def engine_epoch(cfg: Config, parts: TrainingParts, train: Any, cache: ImageCache,
                 out: Path, epoch: int) -> float:
    """Seconds for one epoch of ``cfg.data.batches_per_epoch`` engine steps."""
    run = train_epoch_deferred if sync_interval(cfg, parts.device) > 1 else train_epoch
    shown: list[float] = []
    sync(parts.device)
    start = time.perf_counter()
    loader = make_loader(cfg, train, epoch, cache, parts.device)
    run(cfg, parts, loader, epoch, out, lambda step, values: shown.append(values["loss"]))
    sync(parts.device)
    return time.perf_counter() - start


def measure(args: argparse.Namespace, tmp: Path,
            report: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], dict]:
    """Rows ``{"variant", "compile", "img_s", "rounds"}`` and facts about the run."""
    root = dataset_root(args, tmp)
    rows: list[dict[str, Any]] = []
    info: dict[str, Any] = {}
    for mode in args.compile:
        cfg = config(args, root, tmp / f"out_{mode}", mode)
        bundle = build_data(cfg)
        parts = setup(cfg, bundle)
        cache = build_cache(cfg, bundle.train, report, parts.device)
        info.update(images=len(bundle.train), ids=bundle.train.num_classes,
                    sync_every=sync_interval(cfg, parts.device), amp=cfg.train.amp,
                    fused=bool(parts.optimizer.defaults.get("fused")))
        batch, b = random_batch(cfg, parts), cfg.data.p * cfg.data.k
        start = time.perf_counter()
        bare_steps(cfg, parts, batch, args.warmup)  # compiles, autotunes, fills the caches
        engine_epoch(cfg, parts, bundle.train, cache, cfg.train.out, 0)
        info[f"warmup_s_{mode}"] = time.perf_counter() - start
        times: dict[str, list[float]] = {"bare": [], "engine": []}
        for r in range(args.repeats):
            order = ["bare", "engine"] if r % 2 == 0 else ["engine", "bare"]
            for name in order:
                seconds = (bare_steps(cfg, parts, batch, args.steps) if name == "bare" else
                           engine_epoch(cfg, parts, bundle.train, cache, cfg.train.out, r + 1))
                times[name].append(seconds)
                report(f"  {mode:<14} round {r + 1} {name:<6} {b * args.steps / seconds:8.1f} "
                       "img/s")
        for name, seconds in times.items():
            rows.append({"variant": name, "compile": mode, "rounds": len(seconds),
                         "img_s": b * args.steps / statistics.median(seconds)})
    return rows, info


def table(rows: list[dict[str, Any]]) -> str:
    """One row per (compile mode, variant), the engine's ratio to the bare step of its mode."""
    bare = {r["compile"]: r["img_s"] for r in rows if r["variant"] == "bare"}
    lines = ["| compile | variant | img/s | ratio to bare | rounds |",
             "|---|---|---:|---:|---:|"]
    lines += [f"| {r['compile']} | {r['variant']} | {r['img_s']:.0f} | "
              f"{r['img_s'] / bare[r['compile']]:.2f} | {r['rounds']} |" for r in rows]
    return "\n".join(lines)


def device_name(device: str) -> str:
    """The GPU's name, or "CPU"."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return "CPU"
