"""Galleries beyond memory: a synthetic 100,000-image gallery streamed to a feature store,
evaluated in chunks and indexed with FAISS IVF; peak memory against the in-memory path.

The gallery: images rendered in memory by the synthetic generator (``attreid.data.synth``'s
renderer, 64x32, never written as files), 20 per identity over the six cameras, 4 % junk
(id -1) and 5 % distractors (id 0); the queries: 1,000 further renders of identities 1..500
(two cameras each), so every query has its matches in the first 10,000 gallery images and the
larger galleries add identities that are all wrong answers. The model: a tiny checkpoint
(ResNet-18, 64x32, 128-d embeddings, the ``demo`` preset trained for 3 short epochs on a small
synthetic set; ``--checkpoint`` to use another).

Phases, each in its own process so that its peak memory is its own (the peak is reset through
``/proc/self/clear_refs`` before the measured work and read from ``VmHWM`` after it):

    extract   render + embed the 100,000 images in batches of 256, streamed to a store
              (shards of 5,000 rows); RSS sampled every 0.2 s, reported at 10k / 30k / 100k
    evaluate  CMC / mAP / mINP of the queries against the first N gallery images: streamed
              (``reid_metrics_on_store``) or in memory (load the gallery, the (Q, N) distance
              matrix, ``reid_metrics``), N = 10k / 30k / 100k (the smaller galleries are the
              first shards of the store)
    index     a FAISS IVF index (nlist 4 sqrt(N), quantizer trained on a seeded sample): from
              the store (``write_index_from_store``) or from in-memory arrays (``write_index``);
              both then answer the queries (top-10), compared

    nice -n 19 python benchmarks/large_gallery.py --write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from _common import RESULTS, machine, replace_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Galleries beyond memory"
SIZES = (10_000, 30_000, 100_000)
SHARD = 5_000
BATCH = 256
PER_ID = 20
QUERY_IDS = 500
SEED = 0
INTRO = """Feature extraction streamed to a sharded, memory-mapped store, evaluation and FAISS
IVF index built from it in chunks, against the in-memory path, on a synthetic 100,000-image
gallery, `nice -n 19 python benchmarks/large_gallery.py --write` (method in the script's
docstring). Peak = the process's peak resident memory during the phase (VmHWM, reset before
it); "over start" = peak minus the resident memory before the phase (the interpreter, torch,
the model, the queries).

Reading: the streamed path's memory is set by its batch, shard and block sizes, not by the
gallery: extraction holds one batch and one shard (the in-memory lists of `embed_files` grow
by 1.6 KiB per image), evaluation holds one (256 queries x 4096 rows) block (the in-memory
path holds the (Q, G) matrix and a (256, G) chunk: 1.3 GiB at 100,000), and the index holds
the FAISS vectors themselves (49 MiB at 100,000) plus a training sample capped at 65,536
vectors. Results are identical: the same CMC / mAP / mINP (the ranking code is shared) and
the same IVF top-10 (the same seeded sample). Streamed evaluation is about 2.5x slower (two
passes over the gallery per query chunk). The low mAP is the tiny 3-epoch model's on 5,000
identities, not the method's. Timings are best effort on a shared machine (load below)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs/large_gallery")
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    parser.add_argument("--phase", choices=["extract", "queries", "collect", "evaluate", "index"])
    parser.add_argument("--mode", choices=["streamed", "memory"], default="streamed")
    parser.add_argument("--size", type=int, default=0)
    return parser.parse_args()


# ---- memory -----------------------------------------------------------------------------------


def _status(key: str) -> int:
    """A /proc/self/status entry in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def reset_peak() -> int:
    """Reset VmHWM to the current RSS (Linux >= 4.0); returns the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


class RssSampler(threading.Thread):
    """Samples VmRSS every ``every`` seconds; ``at(count)`` records it against progress."""

    def __init__(self, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.every, self.peak, self.marks = every, 0, {}
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status("VmRSS"))
            time.sleep(self.every)

    def mark(self, count: int) -> None:
        self.peak = max(self.peak, _status("VmRSS"))
        self.marks[count] = max(_status("VmHWM"), self.peak)

    def stop(self) -> None:
        self._stop.set()


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f}"


# ---- synthetic images ---------------------------------------------------------------------------


def gallery_label(i: int) -> tuple[int, int]:
    """(identity, camera) of gallery image ``i``: junk -1 (4 %), distractor 0 (5 %), else
    identity i // 20 + 1 on camera i % 6 + 1."""
    if i % 25 == 24:
        return -1, i % 6 + 1
    if i % 20 == 10:
        return 0, i % 6 + 1
    return i // PER_ID + 1, i % 6 + 1


def render(kind: str, keys: range) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """uint8 (B, 3, 64, 32) images, Market-style names, ids, cameras of gallery images
    ``keys`` (``kind="gallery"``) or of queries ``keys``."""
    from attreid.data import appearance, camera  # the generator's own drawing code

    renderer = camera._renderer(SEED, (32, 64))
    images, names, ids, cams = [], [], [], []
    for k in keys:
        if kind == "gallery":
            pid, cam = gallery_label(k)
        else:
            pid, cam = k // 2 + 1, (k // 2 + 3 * (k % 2)) % 6 + 1
        rng = appearance._rng(SEED, 4, 7 if kind == "query" else 0, k)
        if pid == -1:
            img = renderer.junk(appearance._person(SEED, 2, k), cam, rng)
        elif pid == 0:
            img = renderer.distractor(appearance._person(SEED, 1, k), cam, rng)
        else:
            img = renderer.person(appearance._person(SEED, 0, pid), cam, rng)
        images.append(np.asarray(img))
        names.append(f"{pid:04d}_c{cam}s1_{k:06d}_00.jpg" if pid >= 0 else
                     f"-1_c{cam}s1_{k:06d}_00.jpg")
        ids.append(pid)
        cams.append(cam)
    batch = np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))
    return batch, names, np.array(ids, np.int64), np.array(cams, np.int64)


def checkpoint(work: Path) -> Path:
    """A tiny trained checkpoint (made once under ``work``)."""
    out = work / "model"
    if (out / "best.pt").is_file():
        return out / "best.pt"
    from attreid.config import load_config
    from attreid.data.synth import generate
    from attreid.training.engine import train

    data = work / "train_data"
    if not data.is_dir():
        generate(data, ids=60, seed=1, layout="market", height=64, width=32)
    cfg = load_config("demo", [f"data.root={data}", "data.workers=0", "data.batches_per_epoch=15",
                               f"train.out={out}", "train.amp=none", "optim.epochs=3",
                               "optim.warmup_epochs=0", "train.tensorboard=false",
                               "train.eval_every=3"])
    train(cfg, log=lambda _: None)
    return out / "best.pt"


# ---- phases (each run in its own process) ----------------------------------------------------


def phase_extract(args: argparse.Namespace) -> dict[str, Any]:
    from attreid.inference.features import ImageBatch, extract_to_store
    from attreid.inference.predictor import Predictor

    predictor = Predictor(args.checkpoint, device="cpu", batch_size=BATCH)
    total = max(args.sizes)
    timing = {"render": 0.0}

    def batches() -> Iterator[ImageBatch]:
        for lo in range(0, total, BATCH):
            t = time.perf_counter()
            images, names, ids, cams = render("gallery", range(lo, min(lo + BATCH, total)))
            timing["render"] += time.perf_counter() - t
            yield ImageBatch(torch.from_numpy(images), names, {"ids": ids, "cams": cams})

    sampler = RssSampler()
    start_rss = reset_peak()
    sampler.start()
    marks = sorted(args.sizes)

    def progress(done: int) -> None:
        while marks and done >= marks[0]:
            sampler.mark(marks.pop(0))

    t0 = time.perf_counter()
    extract_to_store(predictor, batches(), args.work / "gallery", shard_size=SHARD,
                     overwrite=True, progress=progress)
    wall = time.perf_counter() - t0
    sampler.stop()
    return {"images": total, "wall": wall, "render": timing["render"], "start_rss": start_rss,
            "peak": _status("VmHWM"), "marks": sampler.marks}


def phase_collect(args: argparse.Namespace) -> dict[str, Any]:
    """The in-memory extraction's memory: what ``embed_files`` holds, every batch's outputs in
    lists then concatenated, replayed from the store's batches (no model: the model and one
    batch cost the same on both paths)."""
    from attreid.inference.features import FeatureStore, split_probabilities

    store = FeatureStore.open(prefix_store(args.work, args.size))
    start_rss = reset_peak()
    t0 = time.perf_counter()
    paths, embeddings, probabilities = [], [], []
    for chunk in store.chunks(["embeddings", "probabilities"], BATCH, paths=True):
        paths.extend(Path(p) for p in chunk.paths or [])
        embeddings.append(np.array(chunk.arrays["embeddings"]))
        probabilities.append(split_probabilities(np.array(chunk.arrays["probabilities"])))
    emb = np.concatenate(embeddings)  # (N, D)
    probs = {k: np.concatenate([p[k] for p in probabilities]) for k in probabilities[0]}
    wall = time.perf_counter() - t0
    return {"wall": wall, "start_rss": start_rss, "peak": _status("VmHWM"),
            "rows": len(emb), "tasks": len(probs)}


def phase_queries(args: argparse.Namespace) -> dict[str, Any]:
    from attreid.inference.predictor import Predictor

    predictor = Predictor(args.checkpoint, device="cpu", batch_size=BATCH)
    images, _, ids, cams = render("query", range(2 * QUERY_IDS))
    emb = predictor.predict(torch.from_numpy(images)).embeddings
    np.savez(args.work / "queries.npz", emb=emb, ids=ids, cams=cams)
    return {"queries": len(ids)}


def prefix_store(work: Path, size: int) -> Path:
    """The first ``size`` rows of the gallery store (whole shards) as a store of links."""
    if size % SHARD:
        raise ValueError(f"size {size}: expected a multiple of the shard size {SHARD}")
    src, out = work / "gallery", work / f"gallery-{size}"
    manifest = json.loads((src / "manifest.json").read_text())
    if manifest["count"] == size:
        return src
    out.mkdir(exist_ok=True)
    shards = size // SHARD
    for path in src.iterdir():
        if path.name != "manifest.json" and int(path.stem.rsplit("-", 1)[1]) < shards:
            link = out / path.name
            if not link.exists():
                link.symlink_to(path)
    manifest.update(count=size, shards=manifest["shards"][:shards])
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


def phase_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from attreid.inference.features import FeatureStore, reid_metrics_on_store
    from attreid.metrics import pairwise_distance, reid_metrics

    q = np.load(args.work / "queries.npz")
    store = FeatureStore.open(prefix_store(args.work, args.size))
    start_rss = reset_peak()
    t0 = time.perf_counter()
    if args.mode == "streamed":
        result = reid_metrics_on_store(q["emb"], q["ids"], store, q["cams"])
    else:
        gallery = store.column("embeddings")  # (G, D)
        dist = pairwise_distance(q["emb"], gallery).numpy()  # (Q, G)
        result = reid_metrics(dist, q["ids"], store.column("ids"), q["cams"],
                              store.column("cams"))
    wall = time.perf_counter() - t0
    return {"wall": wall, "start_rss": start_rss, "peak": _status("VmHWM"),
            "metrics": {k: float(v) for k, v in result.as_dict().items()}}


def phase_index(args: argparse.Namespace) -> dict[str, Any]:
    from attreid.inference.features import FeatureStore, split_probabilities
    from attreid.search import write_index, write_index_from_store

    q = np.load(args.work / "queries.npz")
    store = FeatureStore.open(prefix_store(args.work, args.size))
    out = args.work / f"index-{args.mode}-{args.size}"
    common = {"checkpoint": args.checkpoint, "kind": "ivf", "overwrite": True}
    start_rss = reset_peak()
    t0 = time.perf_counter()
    if args.mode == "streamed":
        index = write_index_from_store(out, store, **common)
    else:
        paths = [p for c in store.chunks([], paths=True) for p in (c.paths or [])]
        index = write_index(out, paths, store.column("embeddings"),
                            split_probabilities(store.column("probabilities")), **common)
    wall = time.perf_counter() - t0
    peak = _status("VmHWM")
    dist, ids = index.search(q["emb"], 10)
    np.savez(args.work / f"hits-{args.mode}-{args.size}.npz", dist=dist, ids=ids)
    return {"wall": wall, "start_rss": start_rss, "peak": peak, "nlist": index.info["nlist"],
            "disk": sum(p.stat().st_size for p in out.iterdir())}


# ---- driver ----------------------------------------------------------------------------------


def run_phase(args: argparse.Namespace, phase: str, mode: str = "streamed",
              size: int = 0) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--phase", phase, "--mode", mode, "--size", str(size),
           "--work", str(args.work), "--checkpoint", str(args.checkpoint),
           "--sizes", *map(str, args.sizes)]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(phase, mode, size, {k: v for k, v in result.items() if k != "metrics"}, flush=True)
    return result


def table(args: argparse.Namespace, extract: dict[str, Any], collects: dict, evals: dict,
          indexes: dict, checks: dict, load: tuple[float, float]) -> str:
    n, wall, rend = extract["images"], extract["wall"], extract["render"]
    marks = ", ".join(f"{int(k):,} images {mib(v)} MiB" for k, v in extract["marks"].items())
    disk = sum(p.stat().st_size for p in (args.work / "gallery").iterdir())
    extraction = (
        f"**Extraction** (render in memory + embed + stream to {SHARD:,}-row shards): "
        f"{n / wall:,.0f} images/s end to end ({n / (wall - rend):,.0f} images/s embedding "
        f"and writing, {n / rend:,.0f} images/s rendering), {wall:.0f} s. RSS "
        f"{mib(extract['start_rss'])} MiB at the start; its peak after {marks}. The store: "
        f"{mib(disk)} MiB on disk (the embeddings {mib(n * 128 * 4)} MiB).")
    lines = [
        f"### {n:,} synthetic images, 64x32, D=128, {2 * QUERY_IDS} queries "
        f"({datetime.date.today()})",
        "",
        f"Machine: {machine()}. Checkpoint: tiny ResNet-18 (demo preset, 3 short epochs). "
        f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end.",
        "",
        extraction,
        "",
        "| gallery | phase | path | time (s) | peak RSS (MiB) | over start (MiB) | note |",
        "|---:|---|---|---:|---:|---:|---|",
    ]
    start = extract["start_rss"]
    for size in args.sizes:
        c = collects[size]
        lines.append(f"| {size:,} | extract | in memory (lists, replayed) | - | - | "
                     f"{mib(c['peak'] - c['start_rss'])} | what `embed_files` holds |")
        lines.append(f"| {size:,} | extract | streamed | - | {mib(extract['marks'][str(size)])} "
                     f"| {mib(extract['marks'][str(size)] - start)} | peak so far in the "
                     "100k run (the model's forward on a batch included) |")
        for phase, runs in (("evaluate", evals), ("IVF index", indexes)):
            for mode in ("memory", "streamed"):
                r = runs[(mode, size)]
                lines.append(f"| {size:,} | {phase} | {'in memory' if mode == 'memory' else mode}"
                             f" | {r['wall']:.1f} | {mib(r['peak'])} | "
                             f"{mib(r['peak'] - r['start_rss'])} | {checks[(phase, size, mode)]} |")
    return "\n".join(lines)


def checks_for(evals: dict, indexes: dict, work: Path, sizes: list[int]) -> dict:
    out = {}
    for size in sizes:
        a, b = evals[("streamed", size)]["metrics"], evals[("memory", size)]["metrics"]
        diff = max(abs(a[k] - b[k]) for k in a)
        out[("evaluate", size, "memory")] = f"mAP {100 * b['mAP']:.2f}, rank-1 " \
                                            f"{100 * b['rank1']:.2f}"
        out[("evaluate", size, "streamed")] = f"max abs diff of the metrics {diff:.1e}"
        s, m = (np.load(work / f"hits-{mode}-{size}.npz") for mode in ("streamed", "memory"))
        same = float((s["ids"] == m["ids"]).all(1).mean())
        out[("IVF index", size, "memory")] = f"nlist {indexes[('memory', size)]['nlist']}"
        out[("IVF index", size, "streamed")] = (
            f"same top-10 ids for {100 * same:.0f} % of queries, max abs distance diff "
            f"{float(np.abs(s['dist'] - m['dist']).max()):.1e}")
    return out


def main() -> None:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.phase:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
        phases = {"extract": phase_extract, "queries": phase_queries, "collect": phase_collect,
                  "evaluate": phase_evaluate, "index": phase_index}
        print(json.dumps(phases[args.phase](args)))
        return
    args.checkpoint = args.checkpoint or checkpoint(args.work)
    load_start = os.getloadavg()[0]
    extract = run_phase(args, "extract")
    run_phase(args, "queries")
    evals, indexes, collects = {}, {}, {}
    for size in args.sizes:
        collects[size] = run_phase(args, "collect", "memory", size)
        for mode in ("memory", "streamed"):
            evals[(mode, size)] = run_phase(args, "evaluate", mode, size)
            indexes[(mode, size)] = run_phase(args, "index", mode, size)
    body = table(args, extract, collects, evals, indexes,
                 checks_for(evals, indexes, args.work, args.sizes),
                 (load_start, os.getloadavg()[0]))
    print(body)
    if args.write:
        replace_section(SECTION, INTRO, body)


if __name__ == "__main__":
    main()
