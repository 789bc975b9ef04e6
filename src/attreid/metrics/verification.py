"""Verification ("is this the same person?"): distances of genuine and impostor pairs, the
thresholds at a false accept rate (FAR), the true accept rate (TAR) there, the equal error rate
(EER), the ROC curve and the reliability of calibrated probabilities (ECE).

A *genuine* pair is two crops of one identity seen by different cameras (any two crops of one
identity where cameras are unknown, ``-1``); an *impostor* pair is two crops of different
identities. Pairs of one identity in one camera are neither (near-duplicate frames of a track
would make verification look easier than it is). A pair is accepted when its distance is at
most the threshold: FAR = accepted impostors / impostors, TAR = accepted genuine / genuine.

Every pair of N crops is scored in blocks of rows (``N^2 / 2`` distances are never held at
once): all genuine distances are kept, of the impostors only the smallest (enough for any FAR
down to :data:`TAIL_FAR`, exactly) and a uniform random sample (histograms, fitting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch, only needed where a distance is measured
    from attreid.metrics.inputs import ArrayLike


TAIL_FAR = 0.05
"""Impostor distances kept exactly: the smallest ``TAIL_FAR`` of all impostor pairs (FARs up
to 5 % have exact thresholds; the EER is found there too unless verification is worse)."""

FARS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
"""The operating points reported and stored."""

SUPPORT_PAIRS = 10
"""Impostor pairs an operating point must expect to accept: FAR ``f`` is supported by ``n``
impostor pairs when ``f * n >= 10`` (see :func:`far_support`)."""


@dataclass(frozen=True)
class PairDistances:
    """Distances of the pairs of a labelled set.

    Attributes:
        genuine: (P,) float64, every genuine pair's distance, ascending.
        impostor_tail: (T,) float64, the smallest impostor distances, ascending; T >=
            ``ceil(TAIL_FAR * num_impostor)`` unless there are fewer impostors.
        impostor_sample: (S,) float64, a uniform random sample of impostor distances.
        num_impostor: how many impostor pairs there are in all.
        num_images, num_identities: the crops and identities that made the pairs.
    """

    genuine: np.ndarray
    impostor_tail: np.ndarray
    impostor_sample: np.ndarray
    num_impostor: int
    num_images: int
    num_identities: int


def pair_distances(embeddings: ArrayLike, identities: ArrayLike, cameras: ArrayLike,
                   metric: str = "euclidean", sample: int = 1_000_000, seed: int = 0,
                   block: int = 1024, people: ArrayLike | None = None) -> PairDistances:
    """Every pair (i < j) of ``embeddings`` (N, D), split into genuine and impostor.

    Args:
        identities: (N,) int, one value per person (give each distractor a value of its own).
        cameras: (N,) int camera of each crop, ``-1`` where unknown.
        metric: as :func:`attreid.metrics.distance.pairwise_distance`.
        sample: impostor distances kept at random (all of them when there are fewer).
        block: rows scored at once (memory ~ ``block * N * 8`` bytes).
        people: (N,) bool, whether each crop shows a person; when given, a pair of two crops
            that do not (distractors) is left out: nobody searches with one, and such pairs
            (background patches alike) crowd the smallest impostor distances. A search's
            impostors are a person against anything.

    Raises:
        ValueError: shapes disagree, or no genuine or no impostor pair exists.
    """
    from attreid.metrics.distance import pairwise_distance  # torch: only to measure
    from attreid.metrics.inputs import to_tensor

    x = to_tensor(embeddings, "embeddings")
    ids = np.asarray(identities).astype(np.int64)
    cams = np.asarray(cameras).astype(np.int64)
    n = len(ids)
    if x.ndim != 2 or x.shape[0] != n or cams.shape != (n,):
        raise ValueError(f"embeddings (N, D), identities (N,) and cameras (N,) must agree, got "
                         f"{tuple(x.shape)}, {ids.shape}, {cams.shape}")
    person = np.ones(n, bool) if people is None else np.asarray(people, bool)
    if person.shape != (n,):
        raise ValueError(f"people must be (N,) = ({n},), got {person.shape}")
    num_impostor = _count_impostors(ids) - _count_impostors(ids[~person])
    keep_tail = max(1, math.ceil(TAIL_FAR * num_impostor))
    rate = min(1.0, sample / max(1, num_impostor))
    rng = np.random.default_rng(seed)
    genuine, tail, drawn = [], np.empty(0), []
    for start in range(0, n, block):
        rows = slice(start, min(n, start + block))
        d = pairwise_distance(x[rows], x[start:], metric).double().numpy()  # (b, N - start)
        upper = np.arange(start, start + d.shape[1])[None, :] > np.arange(rows.start,
                                                                        rows.stop)[:, None]
        same = ids[rows, None] == ids[None, start:]
        cross = ((cams[rows, None] != cams[None, start:]) | (cams[rows, None] < 0)
                 | (cams[None, start:] < 0))
        genuine.append(d[upper & same & cross])
        either = person[rows, None] | person[None, start:]
        impostor = d[upper & ~same & either]
        tail = _smallest(np.concatenate([tail, impostor]), keep_tail)
        drawn.append(impostor[rng.random(len(impostor)) < rate])
    pairs = PairDistances(np.sort(np.concatenate(genuine)), tail, np.concatenate(drawn),
                          num_impostor, n, len(np.unique(ids)))
    if not len(pairs.genuine) or not num_impostor:
        raise ValueError(f"{n} crops of {pairs.num_identities} identities give "
                         f"{len(pairs.genuine)} genuine and {num_impostor} impostor pairs: "
                         "verification needs both (two crops of one identity from different "
                         "cameras, and two identities)")
    return pairs


def _count_impostors(ids: np.ndarray) -> int:
    counts = np.unique(ids, return_counts=True)[1].astype(np.int64)
    n = int(counts.sum())
    return (n * n - int((counts * counts).sum())) // 2


def _smallest(values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` smallest of ``values``, ascending."""
    if len(values) > k:
        values = np.partition(values, k - 1)[:k]
    return np.sort(values)


def threshold_at_far(pairs: PairDistances, far: float) -> float:
    """The largest distance threshold whose FAR is at most ``far``: accepting ``d <= t``
    accepts ``floor(far * num_impostor)`` impostors or fewer (ties at ``t`` never push it over).
    Returns the midpoint between the last allowed and the first refused impostor distance
    (below the smallest impostor when none may be accepted).

    Raises:
        ValueError: ``far`` outside (0, TAIL_FAR].
    """
    if not 0 < far <= TAIL_FAR:
        raise ValueError(f"far={far}: expected a rate in (0, {TAIL_FAR}]")
    allowed = math.floor(far * pairs.num_impostor + 1e-9)
    tail = pairs.impostor_tail
    if allowed >= len(tail):
        return float(tail[-1])
    first_refused = tail[allowed]
    below = tail[:allowed][tail[:allowed] < first_refused]  # ties with it are refused too
    last = below[-1] if len(below) else first_refused - 1e-6 * max(1.0, abs(first_refused))
    return float((last + first_refused) / 2)


def far_support(pairs: PairDistances, far: float, threshold: float) -> str | None:
    """Why ``pairs`` cannot support the operating point ``far`` with that ``threshold`` (one
    line starting ``unsupported:``), or None when they can.

    Supported means: at least :data:`SUPPORT_PAIRS` (10) impostor pairs are expected at that
    FAR (``far * num_impostor >= 10``) and at least one impostor pair lies at or below the
    threshold. The threshold at FAR ``f`` is set by the ``f * n`` closest impostor pairs: with
    10 of them the FAR is known to about 1 / sqrt(10) (~30 %, Poisson), with 1 or 2 it could be
    several times off, and with none (``f * n < 1``: 7,628 pairs at 1e-4) the threshold only
    says "below every impostor seen", which any FAR from 0 to ~1 / n fits.
    """
    n = pairs.num_impostor
    lowest = f"{n:,} impostor pairs support FAR down to ~{SUPPORT_PAIRS / max(n, 1):.2g}"
    if far * n < SUPPORT_PAIRS - 1e-9:
        return f"unsupported: {lowest}"
    if np.searchsorted(pairs.impostor_tail, threshold, side="right") == 0:
        return f"unsupported: no impostor pair lies within the threshold ({lowest})"
    return None


def accept_rates(pairs: PairDistances, threshold: float) -> tuple[float, float]:
    """(TAR, FAR) of accepting ``d <= threshold``; the FAR is exact within the kept tail (and
    ``>= TAIL_FAR`` beyond it, estimated from the sample)."""
    tar = np.searchsorted(pairs.genuine, threshold, side="right") / len(pairs.genuine)
    return float(tar), float(_far(pairs, np.array([threshold]))[0])


def _far(pairs: PairDistances, thresholds: np.ndarray) -> np.ndarray:
    """FAR of each threshold: exact inside the kept tail, from the sample beyond it."""
    tail, sample = pairs.impostor_tail, np.sort(pairs.impostor_sample)
    accepted = np.searchsorted(tail, thresholds, side="right")
    exact = accepted / pairs.num_impostor
    if len(tail) >= pairs.num_impostor or not len(sample):
        return exact
    sampled = np.searchsorted(sample, thresholds, side="right") / len(sample)
    return np.where(accepted < len(tail), exact, np.maximum(exact, sampled))


def equal_error_rate(pairs: PairDistances) -> tuple[float, float]:
    """(EER, threshold): where FAR equals FRR = 1 - TAR, searched over every genuine, tail and
    sampled impostor distance; the rate is the mean of the two at the closest crossing."""
    candidates = np.unique(np.concatenate([pairs.genuine, pairs.impostor_tail,
                                           pairs.impostor_sample]))
    frr = 1 - np.searchsorted(pairs.genuine, candidates, side="right") / len(pairs.genuine)
    far = _far(pairs, candidates)
    i = int(np.argmin(np.abs(far - frr)))
    return float((far[i] + frr[i]) / 2), float(candidates[i])


def roc_curve(pairs: PairDistances, points: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, TAR) at ``points`` FARs spaced evenly in log10 from ``1 / num_impostor`` (or
    1e-6) to TAIL_FAR, ascending; for a log-FAR ROC plot."""
    low = max(1.0 / pairs.num_impostor, 1e-6)
    fars = np.logspace(math.log10(low), math.log10(TAIL_FAR), points)
    tars = np.array([accept_rates(pairs, threshold_at_far(pairs, f))[0] for f in fars])
    return fars, tars


def balanced_weights(genuine: int, impostor: int) -> tuple[float, float]:
    """Per-pair weights that give genuine and impostor pairs half the total each (a prior of
    0.5: the question "same person?" asked of a pair either answer fits equally well)."""
    return 0.5 / genuine, 0.5 / impostor


def reliability(probabilities: ArrayLike, same: ArrayLike, weights: ArrayLike | None = None,
                bins: int = 10) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Expected calibration error and the reliability diagram's points.

    Args:
        probabilities: (M,) predicted P(same person) in [0, 1].
        same: (M,) bool, the pair is genuine.
        weights: (M,) pair weights (e.g. :func:`balanced_weights`); equal when ``None``.
        bins: equal-width probability bins.

    Returns:
        (ECE, mean predicted probability per bin, observed genuine fraction per bin, weight
        per bin); empty bins are NaN with weight 0. ECE = sum over bins of weight x |observed
        - predicted|, weights summing to 1.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(same, dtype=bool)
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    which = np.minimum((p * bins).astype(int), bins - 1)
    mass = np.bincount(which, w, bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        predicted = np.bincount(which, w * p, bins) / mass
        observed = np.bincount(which, w * y, bins) / mass
    gaps = np.where(mass > 0, np.abs(observed - predicted), 0.0)
    return float((mass * gaps).sum()), predicted, observed, mass


def far_curve(pairs: PairDistances, per_decade: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The FAR -> threshold curve for operating points between the ones stored: FARs spaced
    ``per_decade`` to a decade in log10 from :data:`TAIL_FAR` down to the smallest the pairs
    support (``SUPPORT_PAIRS / num_impostor``, :func:`far_support`), descending, and the
    threshold of each (:func:`threshold_at_far`, non-increasing). A search's operating point
    for a gallery of N crops needs FARs near ``rate / N`` (e.g. 5e-7 for one stranger per
    100 queries in 20,000 crops), below the stored 1e-2..1e-4."""
    low = SUPPORT_PAIRS / max(pairs.num_impostor, 1)
    if low >= TAIL_FAR:
        fars = np.array([TAIL_FAR])
    else:
        count = max(2, int(math.ceil(per_decade * math.log10(TAIL_FAR / low))) + 1)
        fars = np.logspace(math.log10(TAIL_FAR), math.log10(low), count)
    thresholds = np.array([threshold_at_far(pairs, float(f)) for f in fars])
    return fars, np.minimum.accumulate(thresholds)


def distribution_shift(reference_quantiles: ArrayLike, sample: ArrayLike) -> float:
    """Kolmogorov-Smirnov distance (0..1) between a distribution stored as its quantiles at
    evenly spaced levels 0..1 (``Q`` values, ascending) and a sample: the largest gap between
    the two cumulative distributions, the reference's interpolated linearly between its
    quantiles (exact to ``1 / (Q - 1)``)."""
    q = np.asarray(reference_quantiles, dtype=np.float64)
    x = np.sort(np.asarray(sample, dtype=np.float64).ravel())
    if len(q) < 2 or not len(x):
        return 0.0
    levels = np.linspace(0.0, 1.0, len(q))
    points = np.unique(np.concatenate([q, x]))
    reference = np.interp(points, q, levels, left=0.0, right=1.0)
    observed = np.searchsorted(x, points, side="right") / len(x)
    before = np.searchsorted(x, points, side="left") / len(x)
    return float(max(np.max(np.abs(reference - observed)), np.max(np.abs(reference - before))))
