"""Attributes with their confidence (issue 30), on held-out identities of the Market-1501 test
set: fitted on half of the identities (``attreid calibrate`` does the same on all of them), the
sure values judged on the other half, then the halves swapped.

Per task it reports the accuracy of every value (what was printed as a fact before), the
majority class's, whether the head beats it (95 % bootstrap over identities, on each half),
the threshold, and on the held-out half the share of values shown as sure and how many of those
were right (the target is ``PRECISION``). Crops: the query and gallery crops of the test
identities with attribute labels (junk and distractors left out: they have none).

    python benchmarks/attribute_confidence.py --checkpoint market1501 \\
        --data ../shared/data/market1501 --cache runs/verdicts/market1501_test_probs.npz --write

``--write`` replaces docs/results/attribute_confidence.md; ``--cache`` keeps the probabilities
(computed when absent: one pass over about 16,000 crops).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import _common  # noqa: E402

from attreid.data.evalset import build_evaluation_set  # noqa: E402
from attreid.data.load import load_dataset  # noqa: E402
from attreid.evaluation.verification import labelled_crops, split_identities  # noqa: E402
from attreid.inference.attribute_confidence import (  # noqa: E402
    PRECISION,
    fit_attribute_confidence,
)
from attreid.metrics import majority_gaps  # noqa: E402
from attreid.schema import MISSING, TASKS  # noqa: E402

RESULTS = ROOT / "docs" / "results" / "attribute_confidence.md"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="market1501")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, help=".npz of the crops' class probabilities")
    parser.add_argument("--write", action="store_true")
    return parser.parse_args()


def probabilities(checkpoint: str, paths: list[Path], cache: Path | None
                  ) -> dict[str, np.ndarray]:
    """task -> (N, C) class probabilities of the trained tasks (torch float32, no flip)."""
    from attreid.inference.backends import load_predictor
    from attreid.inference.files import extract_files
    from attreid.models.output import probabilities as to_probabilities

    if cache is not None and cache.exists():
        return dict(np.load(cache))
    predictor, _ = load_predictor(checkpoint, "torch-fp32", flip=False, batch_size=128)
    probs = to_probabilities(extract_files(predictor, paths, 128).logits)
    out = {t: probs[t] for t in predictor.trained_tasks}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **out)
    return out


def judge(fit: dict, probs: dict[str, np.ndarray], targets: np.ndarray, ids: np.ndarray
          ) -> dict[str, dict[str, float]]:
    """Per task on the held-out crops: accuracy, sure share, precision of the sure values, and
    whether the head beats its majority class there."""
    pred = np.full(targets.shape, MISSING, dtype=np.int64)
    for j, task in enumerate(TASKS):
        if task.name in probs:
            pred[:, j] = probs[task.name].argmax(1)
    gaps = majority_gaps(pred, targets, groups=ids)
    out = {}
    for j, task in enumerate(TASKS):
        if task.name not in fit:
            continue
        known = (targets[:, j] != MISSING)
        conf = probs[task.name][known].max(1)
        right = pred[known, j] == targets[known, j]
        t = fit[task.name]["threshold"]
        sure = (conf >= t) if fit[task.name]["better_than_majority"] and t is not None else \
            np.zeros(len(conf), dtype=bool)
        out[task.name] = {"n": int(known.sum()), "right": int(right.sum()),
                          "sure": int(sure.sum()), "sure_right": int(right[sure].sum()),
                          "better": gaps[task.name].better}
    return out


def main() -> int:
    args = parse_args()
    data = build_evaluation_set(load_dataset(args.data, "auto"), "test")
    crops = labelled_crops(data.query + data.gallery)
    keep = (crops.identities >= 0) & (crops.targets != MISSING).any(1)
    paths = [p for p, k in zip(crops.paths, keep) if k]
    probs = probabilities(args.checkpoint, paths, args.cache)
    ids, targets = crops.identities[keep], crops.targets[keep]
    first, _ = split_identities(crops)
    halves = (first[keep], ~first[keep])
    fits, judged = [], []
    for fit_on, held in (halves, halves[::-1]):
        fit = fit_attribute_confidence({t: p[fit_on] for t, p in probs.items()},
                                       targets[fit_on], ids[fit_on])
        fits.append(fit)
        judged.append(judge(fit, {t: p[held] for t, p in probs.items()}, targets[held],
                            ids[held]))
    body = report(args, fits, judged, len(paths), len(np.unique(ids)))
    print(body)
    if args.write:
        from attreid.utils.files import atomic_write_text

        atomic_write_text(RESULTS, HEAD + "\n## Measured\n\n" + body + "\n")
    return 0


def report(args: argparse.Namespace, fits: list, judged: list, crops: int, people: int) -> str:
    lines = [f"### {datetime.date.today().isoformat()}", "",
             f"- machine: {_common.machine()}",
             f"- model: {args.checkpoint}; {crops:,} crops of {people:,} Market-1501 test "
             "identities; fitted on one half of the identities, judged on the other, both "
             f"ways (two numbers: A->B / B->A); target precision {PRECISION:.0%}", "",
             "| task | accuracy of every value | beats its majority class (fit half; held-out "
             "half) | threshold | held-out values shown sure | of those right |",
             "|---|---:|---|---:|---:|---:|"]
    total = {k: 0 for k in ("n", "right", "sure", "sure_right")}
    for task in TASKS:
        if task.name not in judged[0]:
            continue
        rows = [j[task.name] for j in judged]
        for r in rows:
            for k in total:
                total[k] += r[k]
        acc = " / ".join(f"{100 * r['right'] / r['n']:.1f}" for r in rows)
        beats = " / ".join(f"{'yes' if f[task.name]['better_than_majority'] else 'no'}; "
                           f"{'yes' if r['better'] else 'no'}" for f, r in zip(fits, rows))
        thr = " / ".join("-" if f[task.name]["threshold"] is None or not
                         f[task.name]["better_than_majority"] else
                         f"{f[task.name]['threshold']:.3f}" for f in fits)
        sure = " / ".join(f"{100 * r['sure'] / r['n']:.1f}" for r in rows)
        right = " / ".join(f"{100 * r['sure_right'] / r['sure']:.1f}" if r["sure"] else "-"
                           for r in rows)
        lines.append(f"| {task.name} | {acc} | {beats} | {thr} | {sure} | {right} |")
    lines += ["", f"All tasks, both directions: every value shown as a fact was wrong "
              f"{100 * (1 - total['right'] / total['n']):.1f} % of the time; "
              f"{100 * total['sure'] / total['n']:.1f} % of the values are now shown sure"
              + (f", and {100 * (1 - total['sure_right'] / total['sure']):.1f} % of those were "
                 "wrong." if total["sure"] else ".")]
    return "\n".join(lines)


HEAD = """# Attributes with their confidence (issue 30)

`python benchmarks/attribute_confidence.py --checkpoint market1501 --data
../shared/data/market1501 --write` (see its docstring). `attreid calibrate` fits, per task, the
smallest probability at which the values at least that probable were right 90 % of the time
(`attreid.inference.attribute_confidence`), and whether the head beats always answering its
majority class (95 % bootstrap interval over identities above 0); search, its CSV and JSON, the
API and the page show a value below its threshold, or any value of a head that does not beat
its majority class, as uncertain ("female?"). This measures it on identities the fit never saw.
"""

if __name__ == "__main__":
    raise SystemExit(main())
