"""k-reciprocal re-ranking: the dense reference against the memory-bounded version.

Random clustered features (D = 128, one Gaussian centre per identity, about 26 gallery images
per identity, noise 1.6), measured at each size, one fresh subprocess per method and size:

    dense       attreid.metrics.reranking.rerank_dense: several float64 N x N matrices, N = Q + G;
                the baseline of the ratios
    bounded     attreid.metrics.reranking.rerank, chunk_size 256 (or each of --chunk-sizes)

Time is the best of ``--repeats`` runs (the machine is shared); memory is the subprocess's peak
resident set during the call (``VmHWM`` of /proc/self/status, reset just before the call through
/proc/self/clear_refs) minus its resident set before it (interpreter, torch, the features): what
the method itself held at its peak, output included. (``ru_maxrss`` would not do: it keeps the
parent's peak across fork + exec.) Dense runs
only where its estimated peak fits in ``--dense-limit-gb``; above, its time and memory are
extrapolated as N² from the largest size it ran at (marked "est."). Where both ran, the table
gives the max |bounded - dense| and the mAP before / after re-ranking (``reid_metrics``,
protocol "seed"). ``--write`` replaces the "## Re-ranking" section of RESULTS.md.

    python benchmarks/rerank.py --write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, machine, replace_section

from attreid.metrics import pairwise_distance, reid_metrics
from attreid.metrics.reranking import rerank, rerank_dense

SECTION = "## Re-ranking"
INTRO = ("Dense reference against the memory-bounded `attreid.metrics.reranking.rerank`, "
         "`python benchmarks/rerank.py --write`.")
DIM, NOISE, GALLERY_PER_ID, SEED = 128, 1.6, 26, 0
DENSE_BYTES_PER_N2 = 44  # ~5.5 float64 N x N matrices at dense's peak (measured at N = 6000)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["1000x5000", "2000x10000", "3368x19732"],
                        help="QxG pairs")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dense-limit-gb", type=float, default=12.0,
                        help="run dense only where its estimated peak stays below this")
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    parser.add_argument("--child", nargs=4, metavar=("METHOD", "Q", "G", "CHUNK"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    return parser.parse_args()


def clustered(q: int, g: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Query (Q, D) and gallery (G, D) float32 features and their identities."""
    rng = np.random.default_rng(SEED)
    ids = max(g // GALLERY_PER_ID, 2)
    centres = rng.normal(size=(ids, DIM))
    qids, gids = rng.integers(ids, size=q), rng.integers(ids, size=g)
    query = (centres[qids] + NOISE * rng.normal(size=(q, DIM))).astype(np.float32)
    gallery = (centres[gids] + NOISE * rng.normal(size=(g, DIM))).astype(np.float32)
    return query, gallery, qids, gids


def memory_kib(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, KiB (Linux)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1])


def child(method: str, q: int, g: int, chunk: int, save: str | None) -> None:
    """One measured call in this process; prints a JSON line."""
    query, gallery, _, _ = clustered(q, g)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM) to the current resident set
    before = memory_kib("VmRSS")
    start = time.perf_counter()
    if method == "dense":
        out = rerank_dense(query, gallery)
    else:
        out = rerank(query, gallery, chunk_size=chunk)
    seconds = time.perf_counter() - start
    after = memory_kib("VmHWM")
    if save:
        np.save(save, out)
    print(json.dumps({"seconds": seconds, "peak_mib": (after - before) / 1024,
                      "base_mib": before / 1024}))


def measure(method: str, q: int, g: int, chunk: int, repeats: int, save: str | None) -> dict:
    """Best time over repeats, each in a fresh subprocess; the largest peak memory."""
    runs = []
    for r in range(repeats):
        cmd = [sys.executable, __file__, "--child", method, str(q), str(g), str(chunk)]
        if save and r == 0:
            cmd += ["--save", save]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  {method:8s} {q}x{g} chunk {chunk}: {runs[-1]}", flush=True)
    return {"seconds": min(r["seconds"] for r in runs),
            "peak_mib": max(r["peak_mib"] for r in runs), "estimated": False}


def quality(q: int, g: int, out: np.ndarray) -> tuple[float, float]:
    """mAP of the plain Euclidean distance and of the re-ranked one."""
    query, gallery, qids, gids = clustered(q, g)
    plain = reid_metrics(pairwise_distance(query, gallery), qids, gids, protocol="seed").mAP
    return plain, reid_metrics(out, qids, gids, protocol="seed").mAP


def run_size(args: argparse.Namespace, q: int, g: int, dense_ref: dict | None,
             tmp: Path) -> tuple[list[dict], dict | None]:
    n = q + g
    rows, bounded_file = [], tmp / f"bounded_{q}x{g}.npy"
    dense_gib = DENSE_BYTES_PER_N2 * n * n / 2**30
    dense = None
    if dense_gib <= args.dense_limit_gb:
        dense = measure("dense", q, g, 0, 1, str(tmp / f"dense_{q}x{g}.npy"))
        dense["n"] = n
    elif dense_ref is not None:  # extrapolate as N²
        scale = (n / dense_ref["n"]) ** 2
        dense = {"seconds": dense_ref["seconds"] * scale, "peak_mib": dense_ref["peak_mib"] * scale,
                 "estimated": True, "n": n}
    if dense is not None:
        rows.append({"method": "dense", "size": f"{q}x{g}", **dense})
    for chunk in args.chunk_sizes:
        res = measure("bounded", q, g, chunk, args.repeats, str(bounded_file))
        out = np.load(bounded_file)
        res["map"] = quality(q, g, out)
        dense_file = tmp / f"dense_{q}x{g}.npy"
        res["max_diff"] = (float(np.abs(out - np.load(dense_file)).max())
                           if dense_file.exists() else None)
        rows.append({"method": f"bounded (chunk {chunk})", "size": f"{q}x{g}", **res})
    return rows, (dense if dense is not None and not dense["estimated"] else dense_ref)


def table(rows: list[dict]) -> str:
    lines = ["| Q x G | method | time (s) | peak memory (MiB) | time / dense | memory / dense "
             "| max abs diff vs dense | mAP plain -> re-ranked |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    dense = {r["size"]: r for r in rows if r["method"] == "dense"}
    for r in rows:
        est = " (est.)" if r.get("estimated") else ""
        ref = dense.get(r["size"])
        ratio_t = f"{r['seconds'] / ref['seconds']:.2f}" if ref and r is not ref else ""
        ratio_m = f"{r['peak_mib'] / ref['peak_mib']:.3f}" if ref and r is not ref else ""
        diff = "" if r.get("max_diff") is None else f"{r['max_diff']:.1e}"
        maps = f"{r['map'][0]:.3f} -> {r['map'][1]:.3f}" if "map" in r else ""
        lines.append(f"| {r['size']} | {r['method']} | {r['seconds']:.1f}{est} | "
                     f"{r['peak_mib']:.0f}{est} | {ratio_t} | {ratio_m} | {diff} | {maps} |")
    return "\n".join(lines)


def report(args: argparse.Namespace, rows: list[dict], load: tuple[float, float]) -> str:
    return "\n".join([
        f"### k1=20, k2=6, lambda=0.3, D={DIM} ({datetime.date.today().isoformat()})", "",
        f"Machine: {machine()}. Best of {args.repeats} runs for the bounded version, one for "
        "dense; peak memory = the subprocess's peak resident set during the call minus its "
        "resident set just before (output included; the (Q, G) float32 output of Market size "
        f"is 254 MiB). 1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the "
        "end (above 0, other jobs shared the 2 cores: times are then upper bounds). "
        "\"est.\": dense extrapolated as N² from the largest size it ran at (it would not fit "
        f"under {args.dense_limit_gb:g} GiB).", "",
        table(rows), ""])


def main() -> None:
    args = parse_args()
    if args.child:
        method, q, g, chunk = args.child
        child(method, int(q), int(g), int(chunk), args.save)
        return
    rows, dense_ref, load_start = [], None, os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            q, g = map(int, size.split("x"))
            size_rows, dense_ref = run_size(args, q, g, dense_ref, Path(tmp))
            rows += size_rows
    body = report(args, rows, (load_start, os.getloadavg()[0]))
    print(body)
    if args.write:
        replace_section(SECTION, INTRO, body)
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    main()
