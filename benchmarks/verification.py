"""Verification on Market-1501 test: calibrate on half of the test identities, report on the
other half (issue 19). Writes the section "## 4. Is this the same person?" of docs/RESULTS.md
with ``--write`` and the reliability diagram to docs/verification_reliability.png.

For each method (platt, isotonic): fitted on the pairs of half A, applied to the pairs of half B
(disjoint identities, distractors split too): TAR at A's thresholds for FAR 1e-2 / 1e-3 / 1e-4
and the FAR they really give on B, B's own EER, and the expected calibration error on B (pairs
weighted half genuine, half impostor, as the mapping's prior). Then how the thresholds move when
a new camera network calibrates on a small labelled set: 50 / 100 / 200 identities drawn from A
(5 draws each), their FAR 1e-3 threshold and the FAR it gives on B.

    python benchmarks/verification.py runs/market_cpu60/best.pt --data ../shared/data/market1501 \\
        --flip --write
"""

from __future__ import annotations

import argparse
import datetime
import statistics
from pathlib import Path

import _common
import numpy as np

from attreid.data.evalset import build_evaluation_set
from attreid.data.load import load_dataset
from attreid.evaluation.verification import LabelledCrops, labelled_crops, split_identities
from attreid.evaluation.verification_plots import plot_reliability
from attreid.inference.backends import load_predictor
from attreid.inference.calibration import METHODS, Calibration, far_key, fit_calibration
from attreid.inference.fits import fit_person, score_person
from attreid.inference.files import extract_files
from attreid.metrics.verification import (
    FARS,
    PairDistances,
    accept_rates,
    balanced_weights,
    equal_error_rate,
    pair_distances,
    reliability,
)

DOCS = Path(__file__).resolve().parents[1] / "docs"
SECTION = "## 4. Is this the same person? Verification on Market-1501"
INTRO = """\
`attreid calibrate` maps distance to P(same person) and stores the thresholds at FAR 1e-2 / 1e-3 /
1e-4 (README, "Is this the same person?"). Here it is fitted on half of the Market-1501 test
identities and judged on the other half, which it never saw. The default method is Platt scaling:
on these held-out pairs both methods are calibrated to within 0.01 (isotonic 0.003, Platt 0.006
with all of half A; the same within 0.002 with 50-200 identities), and Platt's mapping is
strictly monotone (results keep their distance order, no ties of probability), has two parameters
and extrapolates beyond the fitted distances; isotonic (`--method isotonic`) is a step function."""
SIZES = (50, 100, 200)
DRAWS = 5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--flip", action="store_true")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=None,
                        help="an .npy file for the embeddings (reused when present)")
    parser.add_argument("--write", action="store_true", help="update docs/RESULTS.md")
    return parser.parse_args()


def embed(args: argparse.Namespace, crops: LabelledCrops) -> tuple[np.ndarray, object]:
    predictor, choice = load_predictor(args.checkpoint, args.backend, flip=args.flip,
                                       probe_images=crops.paths[:64], batch_size=128)
    if args.cache and args.cache.exists():
        return np.load(args.cache), predictor
    done = {"n": 0}

    def progress(n: int) -> None:
        if n - done["n"] >= 4096 or n == len(crops.paths):
            print(f"  embedded {n}/{len(crops.paths)}", flush=True)
            done["n"] = n

    x = extract_files(predictor, crops.paths, 128, progress).embeddings.numpy()
    if args.cache:
        np.save(args.cache, x)
    return x, predictor


def subset(crops: LabelledCrops, x: np.ndarray, mask: np.ndarray, metric: str, seed: int
           ) -> PairDistances:
    return pair_distances(x[mask], crops.identities[mask], crops.cameras[mask], metric,
                          seed=seed)


def held_out_rows(c: Calibration, test: PairDistances) -> list[str]:
    """TAR / real FAR on the held-out pairs at each of the calibration's thresholds."""
    rows = []
    for far in FARS:
        t = c.threshold(far)
        tar, real = accept_rates(test, t)
        rows.append(f"| {c.method} | {far:g} | {t:.3f} | {c.tar[far_key(far)]:.2%} | {tar:.2%} "
                    f"| {real:.2e} |")
    return rows


def ece_of(c: Calibration, test: PairDistances) -> tuple[float, tuple]:
    d = np.concatenate([test.genuine, test.impostor_sample])
    same = np.concatenate([np.ones(len(test.genuine), bool),
                           np.zeros(len(test.impostor_sample), bool)])
    wg, wi = balanced_weights(len(test.genuine), len(test.impostor_sample))
    result = reliability(c.probability(d), same, np.where(same, wg, wi))
    return result[0], result


def identity_study(crops: LabelledCrops, x: np.ndarray, first: np.ndarray, test: PairDistances,
                   metric: str, sha: str, seed: int) -> list[str]:
    """The FAR 1e-3 threshold fitted on 50 / 100 / 200 identities of half A, the FAR and TAR it
    gives on half B, and the worst ECE on B of each method over the draws."""
    people = np.unique(crops.identities[first & (crops.identities >= 0)])
    rows = []
    for size in SIZES:
        thresholds, fars, tars = [], [], []
        eces: dict[str, list[float]] = {m: [] for m in METHODS}
        for draw in range(DRAWS):
            chosen = np.random.default_rng(seed * 100 + draw).choice(people, size, replace=False)
            mask = np.isin(crops.identities, chosen)
            pairs = subset(crops, x, mask, metric, seed)
            for method in METHODS:
                c = fit_calibration(pairs, method, metric, False, sha)
                eces[method].append(ece_of(c, test)[0])
            t = c.threshold(1e-3)
            tar, far = accept_rates(test, t)
            thresholds.append(t), fars.append(far), tars.append(tar)
        rows.append(f"| {size} | {statistics.mean(thresholds):.3f} ± "
                    f"{statistics.stdev(thresholds):.3f} | {min(fars):.1e} – {max(fars):.1e} | "
                    f"{min(tars):.1%} – {max(tars):.1%} | {max(eces['platt']):.4f} | "
                    f"{max(eces['isotonic']):.4f} |")
    return rows


def person_rows(x: np.ndarray, crops: LabelledCrops, first: np.ndarray, second: np.ndarray,
                metric: str, predictor: object, seed: int, threshold: float) -> list[str]:
    """The person check fitted on half A's crops, judged on half B's (people vs distractors);
    the TAR at A's FAR 1e-3 ``threshold`` once both crops of a pair must pass it; its answer
    for a plain red rectangle and a grey one."""
    from PIL import Image
    from sklearn.metrics import roc_auc_score

    people = crops.identities >= 0
    check = fit_person(x[first], people[first], metric)
    p = np.zeros(len(x))
    p[second] = score_person(check, x[second], metric)
    cut, truth = check["threshold"], people[second]
    held = p[second]
    genuine = subset(crops, x, second, metric, seed).genuine
    passing = subset(crops, x, second & (p >= cut), metric, seed).genuine
    blank = [Image.new("RGB", (64, 128), colour) for colour in ((220, 20, 20), (128, 128, 128))]
    odd = score_person(check, predictor.predict(blank).embeddings, metric)
    return [f"Person check (fitted on A's {int(people[first].sum()):,} people and "
            f"{int((~people[first]).sum()):,} distractor crops, judged on B's): AUC "
            f"{roc_auc_score(truth, held):.3f}. Its threshold, set to refuse 1 % of A's people, "
            f"is P(person) {cut:.3f}; on B it passes {np.mean(held[truth] >= cut):.1%} of the "
            f"people and {np.mean(held[~truth] >= cut):.1%} of the distractors. With both crops "
            f"of a pair required to pass, the TAR at FAR 1e-3 on B is "
            f"{np.sum(passing <= threshold) / len(genuine):.2%} (distance alone "
            f"{np.mean(genuine <= threshold):.2%}). A plain red rectangle gets P(person) "
            f"{odd[0]:.1e}, a grey one {odd[1]:.1e}."]


def main() -> None:
    args = parse_args()
    host = _common.machine()
    dataset = load_dataset(args.data)
    data = build_evaluation_set(dataset, "test")
    crops = labelled_crops(data.query + data.gallery)
    x, predictor = embed(args, crops)
    metric, sha = predictor.distance, predictor.checkpoint_sha256
    first, second = split_identities(crops, args.seed)
    calib, test = (subset(crops, x, m, metric, args.seed) for m in (first, second))
    rate, _ = equal_error_rate(test)
    lines = ["| method | FAR | threshold (from A) | TAR on A | TAR on B | FAR on B |",
             "|---|---:|---:|---:|---:|---:|"]
    eces = {}
    for method in METHODS:
        c = fit_calibration(calib, method, metric, args.flip, sha)
        lines += held_out_rows(c, test)
        eces[method], points = ece_of(c, test)
        if method == "platt":
            plot_reliability(*points[1:], points[0], DOCS / "verification_reliability.png",
                             title="Reliability on held-out identities (Platt)")
    study = identity_study(crops, x, first, test, metric, sha, args.seed)
    platt = fit_calibration(calib, "platt", metric, args.flip, sha)
    person = person_rows(x, crops, first, second, metric, predictor, args.seed,
                         platt.threshold(1e-3))
    body = "\n".join([
        f"Measured {datetime.date.today().isoformat()} on {host}.", "",
        f"Checkpoint `{args.checkpoint}` (sha256 {sha[:16]}…), flip {args.flip}, {metric} "
        f"distance. Market-1501 test: {len(crops.paths):,} crops (query + gallery, junk left "
        f"out, each distractor its own identity), identities split in half with seed "
        f"{args.seed}: A {calib.num_images:,} crops, {len(calib.genuine):,} genuine + "
        f"{calib.num_impostor:,} impostor pairs; B {test.num_images:,} crops, "
        f"{len(test.genuine):,} genuine + {test.num_impostor:,} impostor pairs. Genuine: one "
        "identity, two cameras.", "",
        "`python benchmarks/verification.py " + " ".join(
            [str(args.checkpoint), "--data", str(args.data)] + (["--flip"] if args.flip else [])
            + ["--write"]) + "`", "",
        *lines, "",
        f"EER on B: {rate:.2%}. Expected calibration error on B (10 bins, pairs weighted half "
        f"genuine, half impostor): Platt {eces['platt']:.4f}, isotonic {eces['isotonic']:.4f}. "
        "Reliability diagram (Platt): `docs/verification_reliability.png`.", "", *person, "",
        "A new camera network: fitted on N identities drawn from A (5 draws each), the FAR 1e-3 "
        "threshold (the same for both methods: it comes from the pairs) and what it gives on B, "
        "and each method's worst expected calibration error on B over the draws:", "",
        "| identities | threshold (mean ± sd) | FAR on B (range) | TAR on B (range) | ECE Platt "
        "(worst) | ECE isotonic (worst) |",
        "|---:|---:|---:|---:|---:|---:|", *study, ""])
    print(body)
    if args.write:
        _common.replace_section(SECTION, INTRO, body, DOCS / "RESULTS.md")
        print(f"updated {DOCS / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
