"""Verdicts of a search in a whole Market-1501 test gallery (issue 30): calibrated on half of the
test identities, judged on the queries of the other half against all 19,732 gallery crops.

For each operating point it reports, over the held-out queries:

* strangers marked "same person" per query, in the whole gallery (what a user paging on would
  meet) and in the top 10, against the rate the operating point states;
* the share of the query's true cross-camera matches it still marks;
* the expected calibration error (ECE, 10 bins) of P(same) of the top-10 hits (junk crops,
  id -1, left out: they are neither the person nor a stranger for sure).

Rows: the old semantics (a one-to-one FAR of 1e-3 and the prior 0.5) and the search's
(``Calibration.search_point``: strangers per query ``fpir`` and the prior ``matches / N``) for
several ``fpir`` and ``matches``. Both crops must pass the person check, as in the product.
Then drift: the Kolmogorov-Smirnov distance between half A's fitted distributions and (a) half
B's crops (the same data: no drift), (b) PETS09-S2L1's ground-truth crops (another camera
network; ../shared/data/footage), against ``DRIFT_KS``.

    python benchmarks/search_verdicts.py --checkpoint market1501 --data ../shared/data/market1501 \\
        --cache runs/verdicts/market1501_test_emb.npy --write

``--write`` replaces docs/results/search_verdicts.md. The embeddings (23,100 crops) are cached
in ``--cache`` (computed when absent, about 6 min on 2 cores).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

import _common  # noqa: E402

from attreid.data.evalset import build_evaluation_set  # noqa: E402
from attreid.data.load import load_dataset  # noqa: E402
from attreid.data.records import JUNK_ID  # noqa: E402
from attreid.evaluation.verification import (  # noqa: E402
    DISTRACTOR_ID,
    labelled_crops,
    split_identities,
)
from attreid.inference.calibration import (  # noqa: E402
    DEFAULT_FPIR,
    DEFAULT_MATCHES,
    Calibration,
    fit_calibration,
)
from attreid.inference.fits import fit_person, fit_search  # noqa: E402
from attreid.inference.verdicts import DRIFT_KS  # noqa: E402
from attreid.metrics.distance import pairwise_distance  # noqa: E402
from attreid.metrics.verification import (  # noqa: E402
    distribution_shift,
    pair_distances,
    reliability,
)

RESULTS = ROOT / "docs" / "results" / "search_verdicts.md"
PETS = ROOT.parent / "shared" / "data" / "footage" / "pets09-s2l1"
TOP = 10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="market1501")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, help=".npy of the query + gallery embeddings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true")
    return parser.parse_args()


def embed(checkpoint: str, paths: list[Path], cache: Path | None) -> tuple[np.ndarray, object]:
    from attreid.inference.backends import load_predictor
    from attreid.inference.files import extract_files

    predictor, _ = load_predictor(checkpoint, "auto", flip=False, probe_images=paths[:64],
                                  batch_size=128)
    if cache is not None and cache.exists():
        return np.load(cache), predictor
    x = extract_files(predictor, paths, 128).embeddings.numpy()
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, x)
    return x, predictor


class Judged:
    """The held-out queries against the whole gallery: distances (Q, N) of the queries of half
    B, the gallery's ids / cameras, and P(person) of every crop."""

    def __init__(self, x: np.ndarray, pids: np.ndarray, cams: np.ndarray, nq: int,
                 held: set[int], metric: str, person: np.ndarray) -> None:
        rows = np.array([i for i in range(nq) if int(pids[i]) in held])
        self.qpid, self.qcam = pids[rows], cams[rows]
        self.gpid, self.gcam = pids[nq:], cams[nq:]
        self.qperson, self.gperson = person[rows], person[nq:]
        self.d = np.concatenate([pairwise_distance(x[rows[i:i + 256]], x[nq:], metric)
                                 .double().numpy() for i in range(0, len(rows), 256)])
        self.order = np.argsort(self.d, axis=1, kind="stable")[:, :TOP]

    @property
    def size(self) -> int:
        return len(self.gpid)

    def part(self, columns: np.ndarray) -> "Judged":
        """The same queries against the gallery crops where ``columns`` (N,) is True."""
        other = object.__new__(Judged)
        other.qpid, other.qcam, other.qperson = self.qpid, self.qcam, self.qperson
        other.gpid, other.gcam = self.gpid[columns], self.gcam[columns]
        other.gperson, other.d = self.gperson[columns], self.d[:, columns]
        other.order = np.argsort(other.d, axis=1, kind="stable")[:, :TOP]
        return other

    def masks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(stranger, same person, true cross-camera match), each (Q, N)."""
        same = self.gpid[None, :] == self.qpid[:, None]
        stranger = ~same & (self.gpid[None, :] != JUNK_ID)
        cross = same & (self.gcam[None, :] != self.qcam[:, None])
        return stranger, same, cross

    def judge(self, threshold: float, probability, cut: float) -> dict[str, float]:
        stranger, same, cross = self.masks()
        people = (self.qperson[:, None] >= cut) & (self.gperson[None, :] >= cut)
        marked = (self.d <= threshold) & people
        top = np.take_along_axis(marked, self.order, 1)
        top_stranger = np.take_along_axis(stranger, self.order, 1)
        top_same = np.take_along_axis(same, self.order, 1)
        top_junk = np.take_along_axis(self.gpid[None, :].repeat(len(self.qpid), 0), self.order,
                                      1) == JUNK_ID
        p = probability(np.take_along_axis(self.d, self.order, 1))
        ece = reliability(p[~top_junk], top_same[~top_junk])[0]
        return {"strangers": float((marked & stranger).sum() / len(self.qpid)),
                "strangers_top": float((top & top_stranger).sum() / len(self.qpid)),
                "matches": float((marked & cross).sum() / max(cross.sum(), 1)),
                "ece": ece, "mean_p_strangers_top": float(p[top_stranger & ~top_junk].mean()),
                "queries_with_stranger": float(((marked & stranger).any(1)).mean())}


def pets_crops() -> list:
    """PETS09-S2L1 ground-truth crops of frames 1..300 (768x576), every 10th frame, at least
    60 px tall: (PIL image, person id) pairs."""
    from PIL import Image

    from attreid.footage.mot import read_mot

    out = []
    truth = read_mot(PETS / "gt" / "gt.txt")
    for frame in range(1, 301, 10):
        image = Image.open(PETS / "img1" / f"{frame:06d}.jpg").convert("RGB")
        dets = truth.get(frame)
        if dets is None:
            continue
        for box, pid in zip(dets.boxes, dets.track_ids):
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            if y2 - y1 >= 60:
                out.append((image.crop((max(x1, 0), max(y1, 0), x2, y2)), int(pid)))
    return out


def drift_rows(calibration: Calibration, xb: np.ndarray, metric: str,
               predictor: object) -> list[str]:
    rng = np.random.default_rng(1)

    def ks(vectors: np.ndarray, person_rows: np.ndarray) -> tuple[float, float]:
        a, b = rng.integers(0, len(vectors), 4000), rng.integers(0, len(vectors), 4000)
        keep = a != b
        d = np.diagonal(pairwise_distance(vectors[a[keep]], vectors[b[keep]], metric)
                        .double().numpy())
        p = calibration.person_probability(vectors[person_rows])
        return (distribution_shift(calibration.fitted["impostor_quantiles"], d),
                distribution_shift(calibration.fitted["crop_person_quantiles"], p))

    rows = [f"| half B of Market-1501 test (same data) | {len(xb):,} | "
            + " | ".join(f"{v:.3f}" for v in ks(xb, np.arange(len(xb)))) + " |"]
    if (PETS / "gt" / "gt.txt").is_file():
        crops = pets_crops()
        emb = np.asarray(predictor.predict([c for c, _ in crops]).embeddings)
        ids = np.array([p for _, p in crops])
        rows.append(f"| PETS09-S2L1 ground-truth crops (another camera network, "
                    f"{len(set(ids.tolist()))} people) | {len(crops):,} | "
                    + " | ".join(f"{v:.3f}" for v in ks(emb, np.arange(len(crops)))) + " |")
    return rows


def main() -> int:
    args = parse_args()
    dataset = load_dataset(args.data)
    data = build_evaluation_set(dataset, "test")
    records = data.query + data.gallery
    nq = len(data.query)
    x, predictor = embed(args.checkpoint, [r.path for r in records], args.cache)
    metric = predictor.distance
    pids = np.array([r.pid for r in records], np.int64)
    cams = np.array([r.camid for r in records], np.int64)
    crops = labelled_crops(records)  # no junk; distractors each an identity of their own
    keep = np.array([r.pid != JUNK_ID for r in records])
    first, second = split_identities(crops, args.seed)
    xa = x[keep][first]
    ida, cama = crops.identities[first], crops.cameras[first]
    pairs = pair_distances(xa, ida, cama, metric, seed=args.seed)
    search_pairs = pair_distances(xa, ida, cama, metric, seed=args.seed, people=ida >= 0)
    person = fit_person(xa, ida >= 0, metric)
    is_query = np.arange(len(records))[keep][first] < nq
    search = fit_search(xa, ida, metric, is_query)
    calibration = fit_calibration(pairs, "platt", metric, False, predictor.checkpoint_sha256,
                                  {"data": "Market-1501 test, half A"}, person=person,
                                  search=search, search_pairs=search_pairs)
    pair_prior = replace(calibration, search=None)  # the pair mapping under a prior m / N
    every_pair = replace(calibration, far_curve=fit_calibration(
        pairs, "platt", metric, False, "").far_curve)  # distractor-distractor pairs kept
    held = {int(i) for i in np.unique(crops.identities[second]) if i >= 0}
    held.discard(DISTRACTOR_ID)
    p_person = calibration.person_probability(x)
    judged = Judged(x, pids, cams, nq, held, metric, p_person)
    cut = calibration.person_threshold
    n = judged.size
    lines = [f"### {datetime.date.today().isoformat()}", "",
             f"- machine: {_common.machine()}",
             f"- model: {args.checkpoint} (no flip); calibration (Platt + person check) fitted "
             f"on half A: {pairs.num_identities:,} identities, {len(pairs.genuine):,} genuine "
             f"+ {pairs.num_impostor:,} impostor pairs (FAR supported down to "
             f"{10 / pairs.num_impostor:.1e}); judged on the {len(judged.qpid):,} queries of "
             f"the {len(held)} identities of half B against all {n:,} gallery crops", "",
             "| operating point | threshold | P(same) at it | strangers ✓ per query (all) | "
             "in the top 10 | queries with a stranger ✓ | true cross-camera matches ✓ | "
             "ECE of P(same), top 10 | mean P(same) of strangers in the top 10 |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def row(name: str, c: Calibration, point: Any) -> str:
        if point is None:  # the old one-to-one semantics
            threshold, prob = c.threshold(1e-3), (lambda d: c.probability(d))
        else:
            threshold, prob = point.threshold, (lambda d: c.search_probability(d, point))
        r = judged.judge(threshold, prob, cut)
        return (f"| {name} | {threshold:.4f} | {float(prob(threshold)):.1%} "
                f"| {r['strangers']:.3f} | {r['strangers_top']:.3f} | "
                f"{r['queries_with_stranger']:.1%} | {r['matches']:.1%} | {r['ece']:.4f} | "
                f"{r['mean_p_strangers_top']:.1%} |")

    lines.append(row("before: FAR 1e-3 per pair, prior 0.5", calibration, None))
    for fpir in (0.1, DEFAULT_FPIR, 0.001):
        point = calibration.search_point(n, fpir)
        name = f"fpir {fpir:g}" + (" (default)" if fpir == DEFAULT_FPIR else "") + (
            " (unsupported)" if point.unsupported else "")
        lines.append(row(f"**{name}**" if fpir == DEFAULT_FPIR else name, calibration, point))
    lines += ["", "Alternatives for P(same) of a hit (the ✓ as above) and for the threshold's "
              "impostor pairs:", "",
              "| P(same) of a hit | threshold from | fpir | strangers ✓ per query (all) | "
              "true cross-camera matches ✓ | ECE, top 10 |", "|---|---|---:|---:|---:|---:|"]
    for matches in (1, 3, 10, 30, 100):
        point = pair_prior.search_point(n, DEFAULT_FPIR, matches)
        r = judged.judge(point.threshold, lambda d: pair_prior.search_probability(d, point),
                         cut)
        lines.append(f"| pair mapping, prior {matches:g} / N | pairs with a person | "
                     f"{DEFAULT_FPIR:g} | {r['strangers']:.3f} | {r['matches']:.1%} | "
                     f"{r['ece']:.4f} |")
    for fpir in (0.1, DEFAULT_FPIR):
        point = every_pair.search_point(n, fpir)
        r = judged.judge(point.threshold, lambda d: every_pair.search_probability(d, point),
                         cut)
        lines.append(f"| fitted on search hits | every impostor pair (distractor pairs too) | "
                     f"{fpir:g} | {r['strangers']:.3f} | {r['matches']:.1%} | "
                     f"{r['ece']:.4f} |")
    lines += ["", "P(same) of a hit in smaller galleries (random parts of the gallery, the "
              "default ✓):", "", "| gallery crops | strangers ✓ per query | ECE, top 10 |",
              "|---:|---:|---:|"]
    rng = np.random.default_rng(args.seed)
    for share in (0.1, 0.25, 0.5):
        part = judged.part(rng.random(n) < share)
        point = calibration.search_point(part.size, DEFAULT_FPIR)
        r = part.judge(point.threshold, lambda d: calibration.search_probability(d, point), cut)
        lines.append(f"| {part.size:,} | {r['strangers']:.3f} | {r['ece']:.4f} |")
    _, same, _ = judged.masks()
    lines += ["", f"(The held-out queries have {same.sum(1).mean():.1f} crops of their person in "
              f"the gallery on average, same camera included.)", "",
              f"Drift (Kolmogorov-Smirnov distance to half A's fitted distributions; drift is "
              f"called above {DRIFT_KS}):", "",
              "| data | crops | KS of distances between random pairs | KS of P(person) |",
              "|---|---:|---:|---:|"]
    lines += drift_rows(calibration, x[keep][second], metric, predictor)
    body = "\n".join(lines)
    print(body)
    if args.write:
        from attreid.utils.files import atomic_write_text

        atomic_write_text(RESULTS, HEAD + "\n## Measured\n\n" + body + "\n")
    return 0


HEAD = """# Verdicts of a search (issue 30)

`python benchmarks/search_verdicts.py --checkpoint market1501 --data ../shared/data/market1501
--cache runs/verdicts/market1501_test_emb.npy --write` (see its docstring): a calibration fitted
on half of the Market-1501 test identities, judged on the queries of the other half against the
whole gallery.
"""

if __name__ == "__main__":
    raise SystemExit(main())
