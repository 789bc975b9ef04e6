"""How long ``attreid search`` takes from the shell for a description (issue 31: "every CLI call
takes 4.5-7 s, description searches included"; target < 1.5 s on 2 cores), against a baseline
checkout in the same run: the same query (as attribute chips, which the baseline understands)
through the baseline's code, and ``python -c "import torch"`` for scale. Each command is run
``--runs`` times as a fresh process (the page cache warm after the first); median and maximum
wall time. Writes the section "CLI latency of a description search" of benchmarks/RESULTS.md
with ``--write``.

    attreid index build --images ../shared/data/market1501/bounding_box_test --out /tmp/market_idx
    git worktree add --detach /tmp/baseline 472e721
    python benchmarks/cli_latency.py /tmp/market_idx --baseline /tmp/baseline/src --write
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _common

SRC = Path(__file__).resolve().parents[1] / "src"
SECTION = "## CLI latency of a description search (issue 31)"
WORDS = "woman with a backpack"
CHIPS = "gender=female,backpack=yes"


def wall(args: list[str], src: Path | None, runs: int) -> tuple[float, float]:
    """(median, max) seconds of ``python args`` as fresh processes, attreid from ``src``."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    times = []
    for _ in range(runs + 1):  # the first warms the page cache and is not counted
        start = time.perf_counter()
        done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")
    return statistics.median(times[1:]), max(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("--baseline", type=Path, help="the src folder of a baseline checkout")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    search = ["-m", "attreid.cli", "search", str(args.index), "-k", "10"]
    rows = [("this tree, `--describe \"woman with a backpack\"`",
             wall([*search, "--describe", WORDS], SRC, args.runs)),
            ("this tree, `-a gender=female,backpack=yes`",
             wall([*search, "-a", CHIPS], SRC, args.runs))]
    if args.baseline:
        rows.append((f"baseline ({args.baseline}), `-a gender=female,backpack=yes`",
                     wall([*search, "-a", CHIPS], args.baseline, args.runs)))
    rows.append(("`python -c \"import torch\"` (for scale)",
                 wall(["-c", "import torch"], None, args.runs)))
    body = "\n".join(["| command | median (s) | max (s) |", "|---|---:|---:|",
                      *[f"| {name} | {m:.2f} | {x:.2f} |" for name, (m, x) in rows]])
    print(body)
    if args.write:
        from attreid.search.index import GalleryIndex

        size = len(GalleryIndex.open(args.index))
        intro = (f"Machine: {_common.machine()}. Index: {size:,} crops ({args.index.name}). "
                 f"{args.runs} runs each as a fresh process after one warm-up, "
                 f"`python benchmarks/cli_latency.py` on {time.strftime('%Y-%m-%d')}. A "
                 "description search imports neither torch nor torchvision (the index and its "
                 "calibration need numpy, FAISS and SQLite); an image query still loads the "
                 "model.")
        _common.replace_section(SECTION, intro, body)


if __name__ == "__main__":
    main()
