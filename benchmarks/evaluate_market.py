"""`attreid evaluate` on real Market-1501, end to end, per inference backend, in one run.

Each row runs the command line, ``attreid evaluate CHECKPOINT --data MARKET --flip`` (3,368
queries + 19,732 gallery crops, standard protocol, no re-ranking) in a fresh process, timed from
its start to its exit (wall-clock; Python start-up, model load, decoding, the forward passes, the
distances, the metrics and the figures included); peak memory is the process's peak resident set
(``/usr/bin/time``-style, from ``wait4``). The rows:

    baseline          --backend torch-fp32, decoding in line (DECODE_AHEAD=0): the path
                      `attreid evaluate` took before backends were chosen per machine
    torch-fp32        the same with decoding overlapped (one batch ahead, a thread)
    torch-bf16        bf16 autocast (only on a CPU with native bf16)
    onnx, in line     ONNX Runtime (the export cached by the checkpoint's sha256), decoding in line
    onnx              ONNX Runtime, decoding overlapped
    auto, first       the default, with an empty cache: export + verification + measurement
    auto              the default again: the choice remembered

Every row's metrics are compared with the baseline's (largest difference of mAP, rank-1,
rank-5, mINP, the 12-task mean accuracy and mA, in points). The machine line names the CPU
and its ISA flags. ``--write`` replaces the "## Evaluation on Market-1501, per backend" section
of RESULTS.md.

    python benchmarks/evaluate_market.py --checkpoint runs/market_cpu60/best.pt --write
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, machine, replace_section

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Evaluation on Market-1501, per backend"
INTRO = ("`attreid evaluate` end to end on real Market-1501 (with flip, no re-ranking) per "
         "inference backend, each row a fresh process, "
         "`python benchmarks/evaluate_market.py --write` (rows and method in the script's "
         "docstring).")
KEYS = ("mAP", "rank1", "rank5", "mINP", "mean_accuracy", "mA")
CHILD = ("import sys, attreid.inference.files as f; f.DECODE_AHEAD = int(sys.argv.pop(1)); "
         "from attreid.cli import main; sys.argv[0] = 'attreid'; main()")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "runs/market_cpu60/best.pt")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/market1501")
    parser.add_argument("--rows", nargs="+", default=None, help="only these rows (by name)")
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    return parser.parse_args()


def run_evaluate(checkpoint: Path, data: Path, backend: str, ahead: int, cache: Path,
                 out: Path) -> dict:
    """One `attreid evaluate` in a fresh process: wall seconds, peak RSS (MiB), metrics, the
    backend line it printed."""
    env = {**os.environ, "ATTREID_CACHE_DIR": str(cache)}
    args = [sys.executable, "-c", CHILD, str(ahead), "evaluate", str(checkpoint), "--data",
            str(data), "--flip", "--device", "cpu", "--out", str(out), "--backend", backend]
    start = time.perf_counter()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"evaluate --backend {backend} failed:\n{stdout}\n{stderr}")
    metrics = json.loads((out / "metrics.json").read_text())
    line = next((ln for ln in stderr.splitlines() if ln.startswith("backend:")), "")
    return {"wall_s": wall, "peak_mib": usage.ru_maxrss / 1024, "metrics": metrics,
            "backend_line": line}


def diff_points(a: dict, b: dict) -> float:
    return max(abs(a[k] - b[k]) * 100 for k in KEYS if k in a and k in b)


def main() -> None:
    args = parse_args()
    if not args.checkpoint.is_file() or not (args.data / "query").is_dir():
        raise SystemExit(f"needs {args.checkpoint} and Market-1501 at {args.data}")
    from attreid.utils.backend import cpu_bf16_native

    rows = [("baseline", "torch-fp32", 0), ("torch-fp32", "torch-fp32", 1)]
    if cpu_bf16_native():
        rows.append(("torch-bf16", "torch-bf16", 1))
    rows += [("onnx, in line", "onnx", 0), ("onnx", "onnx", 1), ("auto, first", "auto", 1),
             ("auto", "auto", 1)]
    if args.rows:
        rows = [r for r in rows if r[0] in args.rows or r[0] == "baseline"]
    work = Path(tempfile.mkdtemp(prefix="evaluate_market."))
    cache = work / "cache"
    results = {}
    try:
        for name, backend, ahead in rows:
            if name == "auto, first":
                shutil.rmtree(cache, ignore_errors=True)
            results[name] = run_evaluate(args.checkpoint, args.data, backend, ahead, cache,
                                         work / name.replace(", ", "-"))
            r = results[name]
            print(f"{name}: {r['wall_s']:.1f} s, {r['peak_mib']:.0f} MiB, mAP "
                  f"{r['metrics']['mAP']:.4%} {r['backend_line']}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = results["baseline"]
    lines = ["| row | backend | wall (s) | vs baseline | peak RSS (MiB) | mAP | rank-1 | "
             "mean acc. | max metric diff (points) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        m = r["metrics"]
        lines.append(f"| {name} | {m['setup']['backend']} | {r['wall_s']:.1f} | "
                     f"{base['wall_s'] / r['wall_s']:.2f}x | {r['peak_mib']:,.0f} | "
                     f"{m['mAP']:.2%} | {m['rank1']:.2%} | {m['mean_accuracy']:.2%} | "
                     f"{diff_points(m, base['metrics']):.3f} |")
    auto = results.get("auto") or results.get("auto, first")
    note = f"\n\nThe auto rows printed: `{auto['backend_line']}`" if auto else ""
    body = (f"### {args.checkpoint.parent.name}, 3,368 + 19,732 crops "
            f"({datetime.date.today().isoformat()})\n\nMachine: {machine()}; load average "
            f"{os.getloadavg()[0]:.2f} at the end.\n\n" + "\n".join(lines) + note)
    print(body)
    if args.write:
        replace_section(SECTION, INTRO, body)


if __name__ == "__main__":
    main()
