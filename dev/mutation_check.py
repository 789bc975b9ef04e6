"""Mutation check of the test suite (issue 21): plant one fault at a time in a central function,
run the tests, and record which tests turn red. A mutation no test catches is a hole in the suite.

Usage (from the repository root, with the project's virtual environment)::

    .venv/bin/python dev/mutation_check.py                 # every mutation, whole suite
    .venv/bin/python dev/mutation_check.py flip_average    # one mutation
    .venv/bin/python dev/mutation_check.py --tests tests/test_metrics.py market_camera_filter

Each mutation is an exact text replacement in one source file; the file is restored afterwards
(also on Ctrl-C). Results go to ``docs/MUTATIONS.md`` (the machine named) unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "MUTATIONS.md"


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    path: str
    old: str
    new: str


MUTATIONS = [
    Mutation("market_camera_filter",
             "market protocol: remove same-identity gallery entries from *other* cameras "
             "instead of the query's own camera (== flipped to !=)",
             "src/attreid/metrics/reid.py",
             "keep &= ~(same_id & (gcams[None, :] == qcams[:, None]))",
             "keep &= ~(same_id & (gcams[None, :] != qcams[:, None]))"),
    Mutation("binary_coding_swapped",
             "Market attribute coding 1/2 swapped in both directions (raw 1 -> class 1, "
             "raw 2 -> class 0, and back), so reading and writing agree with each other",
             "src/attreid/schema.py",
             "            labels[i] = int(raw[task.name]) - 1",
             "            labels[i] = (int(raw[task.name]) - 1 if task.name == 'age'\n"
             "                         else 2 - int(raw[task.name]))"),
    Mutation("binary_coding_swapped_writer",
             "(companion of binary_coding_swapped: the writer side, applied with it)",
             "src/attreid/schema.py",
             "        raw[task.name] = value + 1",
             "        raw[task.name] = value + 1 if task.name == 'age' else 2 - value"),
    Mutation("flip_average",
             "test-time flip: the mirrored image's embedding is dropped (no average)",
             "src/attreid/inference/extraction.py",
             "embedding=(out.embedding + flipped.embedding) / 2,",
             "embedding=out.embedding,"),
    Mutation("evaluate_euclidean",
             "evaluate ranks by Euclidean distance where the checkpoint says cosine",
             "src/attreid/evaluation/evaluate.py",
             "distance = distance or predictor.distance",
             "distance = distance or \"euclidean\""),
    Mutation("predictor_distance_euclidean",
             "Predictor.distance says Euclidean whatever the checkpoint was trained with "
             "(predict, index and search follow it)",
             "src/attreid/inference/predictor.py",
             "        return \"euclidean\" if distance == \"squared\" else distance",
             "        return \"euclidean\""),
    Mutation("resume_drops_optimizer_state",
             "resume restores the weights but not the optimizer state (Adam moments restart)",
             "src/attreid/training/engine.py",
             '    parts.optimizer.load_state_dict(state["optimizer"])',
             "    pass"),
    Mutation("lr_depends_on_rank",
             "each distributed rank trains with its own learning rate (lr x (1 + rank))",
             "src/attreid/training/engine.py",
             '        group["lr"] = cfg.optim.lr * factor',
             '        group["lr"] = cfg.optim.lr * factor * (1 + parts.info.rank)'),
    Mutation("loss_weights_not_averaged",
             "the uncertainty weights' gradients are summed over ranks, not averaged",
             "src/attreid/training/distributed.py",
             "            p.grad /= info.world_size",
             "            pass"),
]
GROUPS = {"binary_coding_swapped": ("binary_coding_swapped", "binary_coding_swapped_writer")}
COMPANIONS = {m for group in GROUPS.values() for m in group[1:]}


def _apply(mutation: Mutation) -> str:
    """Plant ``mutation``; returns the file's original text."""
    path = ROOT / mutation.path
    text = path.read_text()
    if text.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: the text to mutate occurs {text.count(mutation.old)} "
                         f"times in {mutation.path} (expected once); update dev/mutation_check.py")
    path.write_text(text.replace(mutation.old, mutation.new))
    return text


def _run_tests(tests: list[str]) -> tuple[list[str], str]:
    """Failed test ids and pytest's closing line."""
    # this checkout's src first, so a clone can be checked with the main checkout's venv
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-rfE", "--no-header", *tests], check=False, cwd=ROOT, capture_output=True,
                          text=True, env=env)
    lines = done.stdout.splitlines()
    failed = sorted({re.sub(r" - .*", "", line.split(" ", 1)[1])
                     for line in lines if line.startswith(("FAILED ", "ERROR "))})
    return failed, (lines[-1] if lines else done.stderr[-500:])


def check(name: str, tests: list[str]) -> dict:
    members = [m for m in MUTATIONS if m.name in GROUPS.get(name, (name,))]
    originals: list[tuple[Path, str]] = []
    try:
        for mutation in members:
            originals.append((ROOT / mutation.path, _apply(mutation)))
        start = time.perf_counter()
        failed, summary = _run_tests(tests)
    finally:
        for path, text in reversed(originals):
            path.write_text(text)
    return {"name": name, "what": members[0].what, "failed": failed, "summary": summary,
            "seconds": time.perf_counter() - start}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _collapsed(failed: list[str]) -> list[str]:
    """Test ids with parametrized cases folded: ``test_x[a]``, ``test_x[b]`` -> ``test_x (2 cases)``."""
    groups: dict[str, list[str]] = {}
    for test in failed:
        groups.setdefault(test.split("[", 1)[0], []).append(test)
    return [tests[0] if len(tests) == 1 else f"{base} ({len(tests)} cases)"
            for base, tests in groups.items()]


def _write(results: list[dict], tests: list[str]) -> None:
    intro = ("Written by `dev/mutation_check.py`: each fault is planted alone, the tests run, "
             "and the tests that turned red are listed. A mutation with none is a hole.")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=False,
                            capture_output=True, text=True).stdout.strip() or "unknown"
    machine = (f"Machine: {_cpu()}, {time.strftime('%Y-%m-%d')}, commit {commit}. Tests run: "
               f"{' '.join(tests) or 'the whole suite'}.")
    lines = ["# Mutation check", "", intro, "", machine, ""]
    for r in results:
        lines += [f"## `{r['name']}`", "", r["what"] + ".", "",
                  f"pytest: {r['summary']} ({r['seconds']:.0f} s)", ""]
        lines += [f"* `{t}`" for t in _collapsed(r["failed"])] or ["* **no test failed**"]
        lines.append("")
    RESULTS.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--tests", action="append", default=[],
                        help="test files or ids to run (default: the whole suite)")
    parser.add_argument("--no-write", action="store_true", help=f"do not write {RESULTS.name}")
    args = parser.parse_args()
    known = [m.name for m in MUTATIONS if m.name not in COMPANIONS]
    names = args.names or known
    for name in names:
        if name not in known:
            parser.error(f"unknown mutation {name!r}; known: {', '.join(known)}")
    results = []
    for name in names:
        result = check(name, args.tests)
        print(f"{name}: {len(result['failed'])} failed  ({result['summary']})", flush=True)
        for test in _collapsed(result["failed"]):
            print(f"    {test}")
        results.append(result)
    if not args.no_write:
        _write(results, args.tests)
    return 0 if all(r["failed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
