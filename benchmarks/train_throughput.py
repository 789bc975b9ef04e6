"""Training throughput: the bare model step against full training steps with their data paths.

Measured in one run, on one model / loss / optimizer, images per second:

    bare          model fwd/bwd + Adam on one random batch (no data at all): the baseline
    loader wN     the engine's path: DataLoader(ImageDataset + PIL transforms, N workers,
                  batch_sampler=PKSampler) + the same step
    cached        ImageCache (decoded once) + PKSampler + BatchAugment in the main process
    cached+pf     the same with the batch augmented one step ahead in a background thread

Each variant runs ``--repeats`` times, interleaved, and the best run counts (the 2-core machine
is shared). The table gives each variant's ratio to ``bare`` and the time per step spent waiting
for the batch. ``--write`` replaces the "## Training throughput" section of RESULTS.md.

    python benchmarks/train_throughput.py --height 64 --width 32 --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader

from attreid.data.batch_transforms import BatchAugment
from attreid.data.cache import CachedLoader, ImageCache
from attreid.data.dataset import ImageDataset
from attreid.data.load import load_dataset
from attreid.data.sampler import PKSampler
from attreid.data.synth import generate
from attreid.data.transforms import TransformConfig, build_transforms
from attreid.inference import autocast_context, to_float
from attreid.losses import MultiTaskLoss
from attreid.models import build_model
from attreid.schema import NUM_TASKS

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Training throughput"
CLASSES = (4, 2, 2, 2, 2, 2, 2, 2, 2, 2, 9, 10)  # classes of the 12 attribute tasks


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--model", default="resnet")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--recipe", default="study", choices=["study", "reid", "none"])
    parser.add_argument("--ids", type=int, default=200, help="synthetic identities (half train)")
    parser.add_argument("--p", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--amp", default="bf16", choices=["none", "bf16"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--id-head", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 1, 0],
                        help="DataLoader worker counts to measure")
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    return parser.parse_args()


@dataclass
class Parts:
    model: nn.Module
    criterion: MultiTaskLoss
    optimizer: torch.optim.Optimizer
    amp: str
    channels_last: bool


def build_parts(args: argparse.Namespace, num_classes: int) -> Parts:
    torch.manual_seed(0)
    model = build_model(args.model, backbone=args.backbone, input_size=(args.height, args.width),
                        num_identities=num_classes if args.id_head else 0)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = MultiTaskLoss(id_weight=1.0 if args.id_head else 0.0)
    params = list(model.parameters()) + list(criterion.parameters())
    return Parts(model, criterion, torch.optim.Adam(params, lr=3e-4), args.amp,
                 args.channels_last)


def train_step(parts: Parts, batch: dict[str, torch.Tensor]) -> None:
    """One step as engine.train_epoch does it: images (B, 3, H, W), label (B,), attributes."""
    images = batch["image"]
    if parts.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with autocast_context(torch.device("cpu"), parts.amp):
        output = parts.model(images)
    terms = parts.criterion(to_float(output), batch["label"], batch["attributes"])
    parts.optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    parts.optimizer.step()
    float(terms["loss"].detach())  # the engine reads the loss every step


@dataclass
class Timing:
    images_per_s: float
    wait_ms: float  # mean time per step spent getting the batch
    step_ms: float  # mean time per step in the model step


def timed(parts: Parts, batches: Iterable[dict[str, torch.Tensor]], warmup: int) -> Timing:
    """Run every batch through ``train_step``; time those after the first ``warmup``."""
    parts.model.train()
    wait = work = 0.0
    seen = steps = 0
    it: Iterator = iter(batches)
    for i in range(10**9):
        t0 = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            break
        t1 = time.perf_counter()
        train_step(parts, batch)
        t2 = time.perf_counter()
        if i >= warmup:
            wait, work, seen, steps = wait + t1 - t0, work + t2 - t1, seen + len(batch["label"]), \
                steps + 1
    total = wait + work
    return Timing(seen / total, 1000 * wait / steps, 1000 * work / steps)


def bare_batches(args: argparse.Namespace, count: int) -> Iterator[dict[str, torch.Tensor]]:
    b = args.p * args.k
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(b, 3, args.height, args.width, generator=g),
             "label": torch.arange(args.p).repeat_interleave(args.k),
             "attributes": torch.stack([torch.randint(0, c, (b,), generator=g)
                                        for c in CLASSES], dim=1)}
    assert batch["attributes"].shape == (b, NUM_TASKS)
    return (batch for _ in range(count))


def loader_batches(args, data: ImageDataset, workers: int, count: int) -> DataLoader:
    sampler = PKSampler(data.pids(), args.p, args.k, seed=0, num_batches=count)
    return DataLoader(data, batch_sampler=sampler, num_workers=workers,
                      generator=torch.Generator().manual_seed(0))


def cached_batches(args, data: ImageDataset, cache: ImageCache, cfg: TransformConfig,
                   prefetch: int, count: int) -> CachedLoader:
    sampler = PKSampler(data.pids(), args.p, args.k, seed=0, num_batches=count)
    augment = BatchAugment(cfg, train=True, channels_last=args.channels_last)
    return CachedLoader(data, cache, sampler, augment, torch.Generator().manual_seed(0),
                        prefetch=prefetch)


def augment_cost(args, cache: ImageCache, cfg: TransformConfig, count: int = 50) -> float:
    """Milliseconds per batch of slicing the cache and augmenting, alone."""
    augment = BatchAugment(cfg, train=True, channels_last=args.channels_last)
    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, len(cache), (count, args.p * args.k), generator=g)
    augment(cache.batch(index[0]), g)
    start = time.perf_counter()
    for row in index:
        augment(cache.batch(row), g)
    return 1000 * (time.perf_counter() - start) / count


def run(args: argparse.Namespace, root: Path) -> tuple[list[tuple[str, Timing]], dict]:
    t0 = time.perf_counter()
    generate(root / "synth", ids=args.ids, seed=0, layout="market")
    train = load_dataset(root / "synth").train
    cfg = TransformConfig(height=args.height, width=args.width, recipe=args.recipe)
    data = ImageDataset(train, build_transforms(cfg, train=True))
    t1 = time.perf_counter()
    cache = ImageCache.build([r.path for r in train], args.height, args.width,
                             cache_dir=root / "cache")
    t2 = time.perf_counter()
    ImageCache.build([r.path for r in train], args.height, args.width, cache_dir=root / "cache")
    t3 = time.perf_counter()
    info = {"images": len(data), "ids": data.num_classes, "synth_s": t1 - t0,
            "decode_s": t2 - t1, "load_s": t3 - t2, "cache_mb": cache.nbytes / 1e6,
            "augment_ms": augment_cost(args, cache, cfg)}
    parts = build_parts(args, data.num_classes)
    count = args.warmup + args.steps
    variants: dict[str, Callable[[], Iterable]] = {"bare": lambda: bare_batches(args, count)}
    for w in args.workers:
        variants[f"loader w{w}"] = lambda w=w: loader_batches(args, data, w, count)
    variants["cached"] = lambda: cached_batches(args, data, cache, cfg, 0, count)
    variants["cached+pf"] = lambda: cached_batches(args, data, cache, cfg, 1, count)
    best: dict[str, Timing] = {}
    for _ in range(args.repeats):
        for name, make in variants.items():
            t = timed(parts, make(), args.warmup)
            print(f"  {name:<11} {t.images_per_s:7.1f} img/s", flush=True)
            if name not in best or t.images_per_s > best[name].images_per_s:
                best[name] = t
    return list(best.items()), info


def table(results: list[tuple[str, Timing]]) -> str:
    base = results[0][1].images_per_s
    lines = ["| variant | img/s | ratio to bare | wait ms/step | step ms/step |",
             "|---|---:|---:|---:|---:|"]
    for name, t in results:
        lines.append(f"| {name} | {t.images_per_s:.1f} | {t.images_per_s / base:.2f} | "
                     f"{t.wait_ms:.1f} | {t.step_ms:.1f} |")
    return "\n".join(lines)


def settings(args: argparse.Namespace) -> str:
    return (f"{args.model}/{args.backbone} at {args.height}x{args.width}, recipe {args.recipe}, "
            f"batch P*K = {args.p}*{args.k} = {args.p * args.k}, amp {args.amp}, channels_last "
            f"{args.channels_last}, id head {args.id_head}, {args.steps} timed steps after "
            f"{args.warmup} warm-up, best of {args.repeats}")


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, nproc {os.cpu_count()}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} intra-op threads, Python "
            f"{platform.python_version()}")


def report(args: argparse.Namespace, results: list[tuple[str, Timing]], info: dict) -> str:
    return "\n".join([
        f"### {args.height}x{args.width}, {args.recipe} ({datetime.date.today().isoformat()})", "",
        f"- machine: {machine()}",
        f"- settings: {settings(args)}",
        f"- data: synthetic, {info['ids']} train ids, {info['images']} images; cache build "
        f"(decode + resize, 4 threads) {info['decode_s']:.2f} s, reload from .npy "
        f"{info['load_s']:.3f} s, {info['cache_mb']:.1f} MB; slice + augment alone "
        f"{info['augment_ms']:.2f} ms/batch", "",
        table(results), ""])


def write_section(body: str) -> None:
    """Replace (or add) the subsection of this configuration inside the section."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    head, sep, rest = text.partition(SECTION)
    after = ""
    if sep:
        nxt = rest.find("\n## ")
        section, after = (rest, "") if nxt < 0 else (rest[:nxt + 1], rest[nxt + 1:])
    else:
        section = ""
    title = body.splitlines()[0].split(" (")[0]
    subsections = [s for s in section.split("\n### ")[1:] if not ("### " + s).startswith(title)]
    intro = section.split("\n### ")[0] if sep else (
        "\n\nFull training step against the bare model step, "
        "`python benchmarks/train_throughput.py --write`.\n")
    kept = "".join("\n### " + s.rstrip("\n") + "\n" for s in subsections)
    new = SECTION + intro.rstrip("\n") + "\n" + kept + "\n" + body
    RESULTS.write_text(head.rstrip("\n") + "\n\n" + new.rstrip("\n") + "\n" +
                       ("\n" + after if after else ""))


def main() -> None:
    args = parse_args()
    print(f"{machine()}\n{settings(args)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results, info = run(args, Path(tmp))
    body = report(args, results, info)
    print(body)
    if args.write:
        write_section(body)
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
