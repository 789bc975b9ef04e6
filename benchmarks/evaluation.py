"""Standard Market-1501 evaluation at full size: attreid against a per-query loop and a sort.

A synthetic problem of Market-1501's test size, 3,368 queries x 15,913 gallery images:
750 identities (a query from each of up to 6 cameras, the gallery images of the identity on
several cameras), 2,793 distractors (id 0) and junk (id -1), 2,048-d float32 features with
planted matches (identity centre + per-image noise; ``--noise`` sets how hard it is). The
distance matrix (Euclidean, ``attreid.metrics.pairwise_distance``) is computed once and timed
apart; then, in the same run, on the same matrix:

    attreid     attreid.metrics.reid_metrics(protocol="market"): CMC, mAP and mINP; also
                timed on uniform random distances, its worst case (every row is searched
                in full, since the last match of a random ranking lies near the end)
    loop        a per-query loop written the way the popular toolkits' Python fallback is:
                np.argsort of the row, the same-camera and junk entries removed, then the
                precision at each rank accumulated in Python
    argsort     one plain np.argsort(distmat, axis=1): the floor of every evaluation that
                sorts each row, compiled ones included (it computes no metric)
    torchreid   torchreid's evaluate_rank, where the package is installed
                (``pip install --no-deps torchreid``, which builds no Cython extension here:
                its Python fallback; its rank.py is loaded alone, the package needs OpenCV)

The baselines get the gallery without junk (torchreid's loader drops id -1 at load time,
``evaluate_rank`` would count it as a wrong match); attreid gets the full gallery and removes
junk itself. CMC, mAP and mINP must agree (the loop sorts stably, so exactly; torchreid's
quicksort breaks float32 ties its own way, within 1e-4): the script exits 1 otherwise.

Times are the best of ``--repeats`` runs (the loop: one run). ``--write`` replaces the
"## Evaluation" section of RESULTS.md.

    python benchmarks/evaluation.py --write
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable

import numpy as np
import torch
from _common import RESULTS, machine, replace_section

from attreid.metrics import pairwise_distance, reid_metrics

SECTION = "## Evaluation"
INTRO = ("Full standard-protocol evaluation of a Market-size problem, "
         "`python benchmarks/evaluation.py --write` (method and data in the script's "
         "docstring). `reid_metrics` sorts no row: it sorts each query's matches and places "
         "the other entries among them by binary search, skipping those beyond the last "
         "match. Its cost therefore depends on the ranking: with a trained model most of the "
         "gallery lies beyond the last match; on random distances every entry is searched "
         "(the worst case, still below one full sort).")
TIE_TOLERANCE = 1e-4
IDS, QUERIES, GALLERY, DISTRACTORS, JUNK, CAMERAS, DIM = 750, 3368, 15913, 2793, 1000, 6, 2048


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--noise", type=float, default=2.8,
                        help="per-image noise / centre spread (2.8: mAP about 0.85)")
    parser.add_argument("--chunk-size", type=int, default=256)
    parser.add_argument("--skip-loop", action="store_true", help="skip the slow Python loop")
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    return parser.parse_args()


def market_like(noise: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Features, ids and cameras of queries and gallery (see the module docstring)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(IDS + 1, DIM)).astype(np.float32)
    qids = rng.permutation(np.resize(np.arange(1, IDS + 1), QUERIES))
    people = GALLERY - DISTRACTORS - JUNK
    gids = np.concatenate([rng.permutation(np.resize(np.arange(1, IDS + 1), people)),
                           np.zeros(DISTRACTORS, np.int64), np.full(JUNK, -1)])
    gids = rng.permutation(gids)
    qcams, gcams = rng.integers(1, CAMERAS + 1, QUERIES), rng.integers(1, CAMERAS + 1, GALLERY)

    def features(ids: np.ndarray) -> np.ndarray:
        base = np.where(ids[:, None] > 0, centres[np.maximum(ids, 0)], 0.0)
        spread = np.where(ids[:, None] > 0, noise, 1.0 + noise)  # distractors, junk: anyone
        return (base + spread * rng.normal(size=(len(ids), DIM))).astype(np.float32)

    return dict(query=features(qids), gallery=features(gids), qids=qids, gids=gids,
                qcams=qcams, gcams=gcams)


def per_query_loop(dist: np.ndarray, qids: np.ndarray, gids: np.ndarray, qcams: np.ndarray,
                   gcams: np.ndarray, max_rank: int = 50) -> tuple[np.ndarray, float, float]:
    """CMC, mAP, mINP one query at a time, in the style of the toolkits' Python fallback."""
    cmcs, aps, inps = [], [], []
    for i in range(len(qids)):
        order = np.argsort(dist[i], kind="stable")  # ties: lower gallery index first
        keep = ~((gids[order] == qids[i]) & (gcams[order] == qcams[i]))
        hits = (gids[order] == qids[i])[keep].astype(np.int32)
        if not hits.any():
            continue
        cmc = hits.cumsum()
        cmc[cmc > 1] = 1
        cmcs.append(cmc[:max_rank])
        cumulative = hits.cumsum()
        precision = [x / (r + 1.0) for r, x in enumerate(cumulative)]  # Python, every rank
        aps.append(sum(p * h for p, h in zip(precision, hits)) / hits.sum())
        last = np.nonzero(hits)[0][-1]
        inps.append(cumulative[last] / (last + 1.0))
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps))


def torchreid_rank() -> ModuleType | None:
    """torchreid's ``metrics/rank.py`` loaded on its own, or None when not installed.

    Importing the ``torchreid`` package pulls in OpenCV and more; the evaluation module needs
    only numpy, and falls back to its Python code when the Cython extension is not built.
    """
    spec = importlib.util.find_spec("torchreid")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    for path in (root / "metrics" / "rank.py", root / "reid" / "metrics" / "rank.py"):
        if path.exists():
            module_spec = importlib.util.spec_from_file_location("torchreid_rank", path)
            module = importlib.util.module_from_spec(module_spec)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Cython evaluation ... is unavailable"
                module_spec.loader.exec_module(module)
            return module
    return None


def best_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def run(args: argparse.Namespace) -> tuple[list[dict], dict]:
    data = market_like(args.noise)
    t_dist, dist_t = best_time(lambda: pairwise_distance(data["query"], data["gallery"]), 1)
    dist = dist_t.numpy()
    clean = data["gids"] != -1  # the baselines' gallery: junk dropped as at load time
    base = (np.ascontiguousarray(dist[:, clean]), data["qids"], data["gids"][clean],
            data["qcams"], data["gcams"][clean])
    rows = []
    t, ours = best_time(lambda: reid_metrics(dist, data["qids"], data["gids"], data["qcams"],
                                             data["gcams"], chunk_size=args.chunk_size),
                        args.repeats)
    rows.append(dict(method="attreid reid_metrics", seconds=t, cmc=ours.cmc, mAP=ours.mAP,
                     mINP=ours.mINP))
    noise = np.random.default_rng(1).random(dist.shape, dtype=np.float32)  # no model at all
    t, _ = best_time(lambda: reid_metrics(noise, data["qids"], data["gids"], data["qcams"],
                                          data["gcams"], chunk_size=args.chunk_size),
                     args.repeats)
    rows.append(dict(method="attreid reid_metrics, worst case: uniform random distances",
                     seconds=t))
    t, _ = best_time(lambda: np.argsort(base[0], axis=1), args.repeats)
    rows.append(dict(method="np.argsort(distmat, axis=1) alone", seconds=t))
    if not args.skip_loop:
        t, (cmc, m_ap, m_inp) = best_time(lambda: per_query_loop(*base), 1)
        rows.append(dict(method="per-query Python loop", seconds=t, cmc=cmc, mAP=m_ap,
                         mINP=m_inp))
    rank = torchreid_rank()
    if rank is not None:
        cython = bool(getattr(rank, "IS_CYTHON_AVAI", False))
        t, (cmc, m_ap) = best_time(lambda: rank.evaluate_rank(*base, max_rank=50,
                                                              use_cython=cython), 1)
        rows.append(dict(method=f"torchreid evaluate_rank ({'Cython' if cython else 'Python'})",
                         seconds=t, cmc=cmc, mAP=float(m_ap), tolerance=TIE_TOLERANCE))
    info = dict(distance_s=t_dist, map=ours.mAP, rank1=ours.rank(1), mINP=ours.mINP,
                gallery_clean=int(clean.sum()))
    return rows, info


def agreement(rows: list[dict]) -> list[str]:
    """Problems: a baseline whose CMC, mAP or mINP differs from attreid's by more than its
    tolerance: 1e-9, or ``TIE_TOLERANCE`` for torchreid, whose unstable ``np.argsort`` orders
    the entries at equal float32 distance its own way (every row here has such ties)."""
    ref, problems = rows[0], []
    for row in rows[1:]:
        if "cmc" not in row:
            continue
        row["max_diff"] = max(float(np.abs(np.asarray(row["cmc"]) - ref["cmc"]).max()),
                              abs(row["mAP"] - ref["mAP"]),
                              abs(row.get("mINP", ref["mINP"]) - ref["mINP"]))
        if row["max_diff"] > row.get("tolerance", 1e-9):
            problems.append(f"{row['method']}: differs from attreid by {row['max_diff']:.3g}")
    return problems


def table(rows: list[dict]) -> str:
    ours = rows[0]["seconds"]
    lines = ["| method | time (s) | time / attreid's | max abs diff of CMC, mAP, mINP |",
             "|---|---:|---:|---:|"]
    for row in rows:
        speedup = "-" if row is rows[0] else f"{row['seconds'] / ours:.1f}x"
        diff = f"{row['max_diff']:.1e}" if "max_diff" in row else "-"
        lines.append(f"| {row['method']} | {row['seconds']:.2f} | {speedup} | {diff} |")
    return "\n".join(lines)


def report(args: argparse.Namespace, rows: list[dict], info: dict,
           load: tuple[float, float]) -> str:
    return "\n".join([
        f"### {QUERIES} x {GALLERY}, D={DIM} ({datetime.date.today().isoformat()})", "",
        f"Machine: {machine()}. Best of {args.repeats} runs (the loop and torchreid: one). "
        f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end. "
        f"Distance matrix (torch, Euclidean) {info['distance_s']:.2f} s, not included below. "
        f"Synthetic difficulty (noise {args.noise}): mAP {100 * info['map']:.1f}, rank-1 "
        f"{100 * info['rank1']:.1f}, mINP {100 * info['mINP']:.1f}. attreid ranks the full "
        f"gallery with {JUNK} junk entries; the others the {info['gallery_clean']} without.",
        "", table(rows), ""])


def main() -> None:
    args = parse_args()
    load_start = os.getloadavg()[0]
    rows, info = run(args)
    problems = agreement(rows)
    body = report(args, rows, info, (load_start, os.getloadavg()[0]))
    print(body)
    if problems:
        sys.exit("results differ:\n" + "\n".join(problems))
    if args.write:
        replace_section(SECTION, INTRO, body)
        print(f"updated {RESULTS}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
