"""Training throughput: the bare model step against full training steps with their data paths.

Measured in one run, on one model / loss / optimizer, images per second:

    bare          model fwd/bwd + Adam on one random batch (no data at all): the baseline
    loader wN     the engine's path: DataLoader(ImageDataset + PIL transforms, N workers,
                  batch_sampler=PKSampler) + the same step
    cached        ImageCache (decoded once) + PKSampler + BatchAugment in the main process
    cached+pf     the same with the batch augmented one step ahead in a background thread
    ..., paired   bare and cached steps alternating in one loop (ratio to the paired bare
                  steps): the fairest comparison when other load comes and goes

Each variant runs ``--repeats`` rounds, interleaved with the others, and its timed steps are
pooled. img/s comes from the median step time (waiting for the batch + model step): the
2-core machine is shared, and with 2 intra-op threads any other load slows OpenMP a lot in
bursts; the mean-based img/s is given too. "other cores" is the most CPU that other processes
used during a pooled round (from /proc/stat; our DataLoader workers are not counted); rounds
where others used more than ``QUIET`` cores are left out when the variant has a quieter one.
``--write`` puts the result into the "## Training throughput" section of RESULTS.md (replacing
the subsection of the same size and recipe).

    python benchmarks/train_throughput.py --write
    python benchmarks/train_throughput.py --height 128 --width 64 --steps 20 --warmup 3 --write
    python benchmarks/train_throughput.py --recipe reid --write

``--engine`` (always on CUDA) measures instead the engine's full step against the bare step of
the same model and batch (:mod:`_engine_step`), for each ``--compile`` mode:

    python benchmarks/train_throughput.py --engine --device cuda --preset cpu --height 128 \
        --width 64 --p 16 --k 4 --compile none default reduce-overhead --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import _common
import _engine_step
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
from attreid.inference.extraction import autocast_context, to_float
from attreid.models import build_model
from attreid.schema import TASKS
from attreid.training.losses import MultiTaskLoss

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## Training throughput"
PAIRED = ("bare, paired", "cached, paired")  # rows of the alternating loop
QUIET = 0.2  # rounds where other processes used more cores than this are left out


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
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--amp", default="bf16", choices=["none", "bf16"])
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--id-head", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 1, 0],
                        help="DataLoader worker counts to measure")
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    engine = parser.add_argument_group("engine against bare (--engine, and always on CUDA)")
    engine.add_argument("--engine", action="store_true")
    engine.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    engine.add_argument("--preset", default="cpu", help="the run's model, losses and optimizer")
    engine.add_argument("--compile", nargs="+", default=["none"],
                        help="train.compile modes to measure in turn")
    engine.add_argument("--sync-every", type=int, default=0, help="train.sync_every (0 = auto)")
    engine.add_argument("--data", default="", help="a dataset folder (default: synthetic)")
    engine.add_argument("--set", nargs="*", default=[], help="more config overrides")
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
class Steps:
    """Per-step seconds of one variant, pooled over rounds: waiting for the batch, model step."""

    batch_size: int
    wait: list[float] = field(default_factory=list)
    work: list[float] = field(default_factory=list)
    foreign: list[float] = field(default_factory=list)  # per round: cores used by others

    def images_per_s(self) -> float:
        """From the median step (robust to bursts of load from other processes)."""
        return self.batch_size / statistics.median(w + k for w, k in zip(self.wait, self.work))

    def extend(self, other: "Steps") -> None:
        self.wait += other.wait
        self.work += other.work
        self.foreign += other.foreign

    def mean_images_per_s(self) -> float:
        return self.batch_size * len(self.wait) / (sum(self.wait) + sum(self.work))


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds of the whole machine, of this process and its finished children)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    busy = (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    t = os.times()
    return busy, t.user + t.system + t.children_user + t.children_system


def step_times(parts: Parts, batches: Iterable[dict[str, torch.Tensor]], warmup: int
               ) -> tuple[list[tuple[float, float]], float]:
    """Run every batch through ``train_step``.

    Returns:
        (seconds waiting for the batch, seconds in the step) of each step after ``warmup``,
        and how many cores other processes used meanwhile.
    """
    parts.model.train()
    times: list[tuple[float, float]] = []
    it: Iterator = iter(batches)
    for i in range(10**9):
        if i == warmup:
            cpu0, start = cpu_seconds(), time.perf_counter()
        t0 = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            break
        t1 = time.perf_counter()
        train_step(parts, batch)
        if i >= warmup:
            times.append((t1 - t0, time.perf_counter() - t1))
    del it, batches  # DataLoader workers exit here and count as our children
    cpu1, elapsed = cpu_seconds(), time.perf_counter() - start
    return times, max(0.0, (cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / elapsed


def timed(parts: Parts, batches: Iterable[dict[str, torch.Tensor]], warmup: int,
          batch_size: int) -> Steps:
    """The steps of one stream of batches after ``warmup``."""
    times, foreign = step_times(parts, batches, warmup)
    return Steps(batch_size, [w for w, _ in times], [k for _, k in times], [foreign])


def paired(parts: Parts, first: Iterable[dict[str, torch.Tensor]],
           second: Iterable[dict[str, torch.Tensor]], warmup: int, batch_size: int
           ) -> tuple[Steps, Steps]:
    """Alternate the steps of two streams in one loop, so bursts of load hit both alike."""
    times, foreign = step_times(parts, _alternate(first, second), 2 * warmup)
    one, two = times[0::2], times[1::2]
    return (Steps(batch_size, [w for w, _ in one], [k for _, k in one], [foreign]),
            Steps(batch_size, [w for w, _ in two], [k for _, k in two], [foreign]))


def _alternate(first: Iterable, second: Iterable) -> Iterator:
    """first[0], second[0], first[1], ... each drawn only when asked for (so timed apart)."""
    streams = [iter(first), iter(second)]
    for i in range(10**9):
        item = next(streams[i % 2], None)
        if item is None:
            return
        yield item


def bare_batches(args: argparse.Namespace, count: int) -> Iterator[dict[str, torch.Tensor]]:
    b = args.p * args.k
    g = torch.Generator().manual_seed(0)
    attributes = [torch.randint(0, t.num_classes, (b,), generator=g) for t in TASKS]
    batch = {"image": torch.randn(b, 3, args.height, args.width, generator=g),  # (B, 3, H, W)
             "label": torch.arange(args.p).repeat_interleave(args.k),  # (B,) P ids x K
             "attributes": torch.stack(attributes, dim=1)}  # (B, 12)
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


def augment_cost(args, cache: ImageCache, cfg: TransformConfig, count: int = 50
                 ) -> tuple[float, float]:
    """Milliseconds per batch of slicing the cache and augmenting, alone: (min, median)."""
    augment = BatchAugment(cfg, train=True, channels_last=args.channels_last)
    g = torch.Generator().manual_seed(0)
    index = torch.randint(0, len(cache), (count, args.p * args.k), generator=g)
    augment(cache.batch(index[0]), g)
    times = []
    for row in index:
        start = time.perf_counter()
        augment(cache.batch(row), g)
        times.append(time.perf_counter() - start)
    return 1000 * min(times), 1000 * statistics.median(times)


def run(args: argparse.Namespace, root: Path) -> tuple[list[tuple[str, Steps]], dict]:
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
    count, b = args.warmup + args.steps, args.p * args.k
    variants: dict[str, Callable[[], Iterable]] = {"bare": lambda: bare_batches(args, count)}
    for w in args.workers:
        variants[f"loader w{w}"] = lambda w=w: loader_batches(args, data, w, count)
    variants["cached"] = lambda: cached_batches(args, data, cache, cfg, 0, count)
    variants["cached+pf"] = lambda: cached_batches(args, data, cache, cfg, 1, count)
    rounds: dict[str, list[Steps]] = {name: [] for name in [*variants, *PAIRED]}
    names = [*variants, "paired"]
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order
            if name == "paired":
                pair = paired(parts, variants["bare"](), variants["cached"](), args.warmup, b)
                measured = list(zip(PAIRED, pair))
            else:
                measured = [(name, timed(parts, variants[name](), args.warmup, b))]
            for key, steps in measured:
                rounds[key].append(steps)
                print(f"  round {r + 1} {key:<15} {steps.images_per_s():7.1f} img/s (other "
                      f"processes: {steps.foreign[-1]:.2f} cores)", flush=True)
    return [(name, pool(runs)) for name, runs in rounds.items()], info


def pool(runs: list[Steps]) -> Steps:
    """Pool the quiet rounds (other processes < QUIET cores), or all rounds if none was quiet."""
    quiet = [s for s in runs if s.foreign[0] < QUIET] or runs
    pooled = Steps(runs[0].batch_size)
    for steps in quiet:
        pooled.extend(steps)
    return pooled


def table(results: list[tuple[str, Steps]]) -> str:
    """One row per variant; the paired rows relative to the paired bare steps."""
    bases = {name: dict(results)[PAIRED[0] if name in PAIRED else "bare"] for name, _ in results}
    lines = ["| variant | img/s | ratio to bare | wait ms | step ms | img/s (mean) | ratio (mean) "
             "| rounds | other cores |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t in results:
        base, base_mean = bases[name].images_per_s(), bases[name].mean_images_per_s()
        ms = lambda v: f"{1000 * statistics.median(v):.1f}"  # noqa: E731
        lines.append(f"| {name} | {t.images_per_s():.1f} | {t.images_per_s() / base:.2f} | "
                     f"{ms(t.wait)} | {ms(t.work)} | {t.mean_images_per_s():.1f} | "
                     f"{t.mean_images_per_s() / base_mean:.2f} | {len(t.foreign)} | "
                     f"{max(t.foreign):.2f} |")
    return "\n".join(lines)


def settings(args: argparse.Namespace) -> str:
    return (f"{args.model}/{args.backbone} at {args.height}x{args.width}, recipe {args.recipe}, "
            f"batch P*K = {args.p}*{args.k} = {args.p * args.k}, amp {args.amp}, channels_last "
            f"{args.channels_last}, id head {args.id_head}, {args.steps} timed steps after "
            f"{args.warmup} warm-up, {args.repeats} interleaved rounds, medians of the steps of "
            "the quiet rounds")


def machine() -> str:
    """The machine, with the 1-minute load average (call it before the run: ours adds 2)."""
    return (f"{platform.processor() or platform.machine()}, nproc {os.cpu_count()}, torch "
            f"{torch.__version__}, {torch.get_num_threads()} intra-op threads, Python "
            f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f}")


def report(args: argparse.Namespace, results: list[tuple[str, Steps]], info: dict,
           host: str) -> str:
    return "\n".join([
        f"### {args.height}x{args.width}, {args.recipe} ({datetime.date.today().isoformat()})", "",
        f"- machine: {host} (before the run)",
        f"- settings: {settings(args)}",
        f"- data: synthetic, {info['ids']} train ids, {info['images']} images; cache build "
        f"(decode + resize, 4 threads) {info['decode_s']:.2f} s, reload from .npy "
        f"{info['load_s']:.3f} s, {info['cache_mb']:.1f} MB; slice + augment alone "
        f"{info['augment_ms'][0]:.2f} ms/batch (min; median {info['augment_ms'][1]:.2f})", "",
        table(results), ""])


def write_section(body: str) -> None:
    """Put ``body`` (a "### HxW, recipe (date)" subsection) into the section of RESULTS.md:
    in place of the subsection with the same size and recipe, else at the section's end."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    head, found, rest = text.partition(SECTION)
    end = rest.find("\n## ")
    section, after = (rest, "") if end < 0 else (rest[:end + 1], rest[end + 1:])
    if not found:
        section = ("\n\nFull training step against the bare model step, "
                   "`python benchmarks/train_throughput.py --write`.\n")
    intro, *subsections = section.split("\n### ")
    title = body.splitlines()[0].split(" (")[0].removeprefix("### ")
    parts = [body.removeprefix("### ").strip() if s.startswith(title + " (") else s.strip()
             for s in subsections]
    if not any(s.startswith(title + " (") for s in subsections):
        parts.append(body.removeprefix("### ").strip())
    new = SECTION + intro.rstrip() + "\n" + "".join(f"\n### {s}\n" for s in parts)
    RESULTS.write_text(head.rstrip() + "\n\n" + new + ("\n" + after if after else ""))


def engine_report(args: argparse.Namespace, rows: list, info: dict, host: str) -> str:
    where = _engine_step.device_name(args.device)
    title = (f"{args.height}x{args.width} {args.amp}, sync every {info['sync_every']}, engine "
             f"vs bare on {where}")
    return "\n".join([
        f"### {title} ({datetime.date.today().isoformat()})", "",
        f"- machine: {host} (before the run)",
        f"- settings: preset {args.preset} ({' '.join(args.set) or 'as shipped'}), random "
        f"weights, batch P*K = {args.p}*{args.k}, amp {info['amp']}, channels_last "
        f"{args.channels_last}, fused optimizer {info['fused']}, train.sync_every "
        f"{info['sync_every']}, {args.steps} steps a round after {args.warmup} warm-up steps and "
        f"one warm-up epoch, median of {args.repeats} interleaved rounds",
        f"- data: {args.data or 'synthetic'}, {info['ids']} train ids, {info['images']} images",
        "", _engine_step.table(rows), ""])


def main() -> None:
    args = parse_args()
    if args.engine or args.device != "cpu":
        main_engine(args)
        return
    host = machine()
    print(f"{host}\n{settings(args)}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results, info = run(args, Path(tmp))
    body = report(args, results, info, host)
    print(body)
    if args.write:
        write_section(body)
        print(f"updated {RESULTS}")


def main_engine(args: argparse.Namespace) -> None:
    host = f"{_common.machine()}, device {_engine_step.device_name(args.device)}"
    print(host, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows, info = _engine_step.measure(args, Path(tmp))
    body = engine_report(args, rows, info, host)
    print(body)
    if args.write:
        write_section(body)
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
