"""Answers for people: the :class:`Verdict` of one pair (one-to-one) or of a search hit
(one-to-many), each with the rule that links its P(same) and its decision; the
:class:`Verifier` that compares two crops; and the drift checks that say when data is unlike
what a calibration was fitted on (:func:`gallery_drift` for a gallery, :func:`unlike_people` for
single crops), with the fix.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from attreid.inference.calibration import (
    DEFAULT_FAR,
    Calibration,
    CalibrationError,
    SearchPoint,
    calibration_path,
    check_far,
    find_calibration,
)
from attreid.metrics.verification import distribution_shift

UNLIKE_PEOPLE = 0.05
"""A crop whose P(person) is below this quantile of the calibration's people is called unlike
them (:func:`unlike_people`); the person check itself refuses below 0.01."""
DRIFT_KS = 0.2
"""Kolmogorov-Smirnov distance above which data is called unlike the calibration's (see
:func:`gallery_drift`; measured in docs/RESULTS.md part 4)."""


def gallery_drift(calibration: Calibration, impostor_like: Any = None,
                  person: Any = None) -> list[str]:
    """Whether data looks like what this calibration was fitted on: one line per sign of
    drift, [] when none (or the file predates the record).

    Args:
        impostor_like: distances of pairs that are mostly different people (random pairs
            of a large gallery's crops), compared with the fitted impostor distances.
        person: P(person) of a gallery's crops, compared with that of the calibration
            set's crops (people and distractors).
    Compared by the Kolmogorov-Smirnov distance; above :data:`DRIFT_KS` it is drift.
    """
    lines = []
    checks = (("impostor_quantiles", impostor_like, "distances between different people"),
              ("crop_person_quantiles", person, "P(person) of its crops"))
    for key, sample, what in checks:
        reference = calibration.fitted.get(key)
        if sample is None or not reference or not np.size(sample):
            continue
        ks = distribution_shift(reference, sample)
        if ks > DRIFT_KS:
            data = Path(str(calibration.data.get("data", "its labelled set"))).name
            lines.append(f"drift: the {what} differ from those the calibration was fitted "
                         f"on ({data}; Kolmogorov-Smirnov {ks:.2f} > {DRIFT_KS}): its "
                         "P(same) and thresholds may not hold here; fit one on this camera "
                         "network (attreid calibrate --out FILE with --data <labelled crops> "
                         "or, without labels, --footage VIDEO --tracks TRACKS.txt; then "
                         "--calibration FILE)")
    return lines


def unlike_people(calibration: Calibration, person: Sequence[float]) -> list[str]:
    """Drift seen in single crops: one line when any of ``person`` (P(person) of crops)
    is below what :data:`UNLIKE_PEOPLE` of the calibration's people had (crops unlike
    those it was fitted on: another camera network, another look); [] otherwise or in
    files from before the record."""
    q = calibration.fitted.get("person_quantiles") or (calibration.person or {}).get("quantiles")
    if not q:
        return []
    low = float(np.interp(UNLIKE_PEOPLE, np.linspace(0, 1, len(q)), q))
    odd = [f"{p:.1%}" for p in person if p < low]
    if not odd:
        return []
    data = Path(str(calibration.data.get("data", "its labelled set"))).name
    return [f"drift: P(person) {', '.join(odd)} is below what {1 - UNLIKE_PEOPLE:.0%} of "
            f"the people the calibration was fitted on had ({data}; {low:.1%}): these "
            "crops look unlike them and its P(same) may not hold; on a new camera network "
            "fit a calibration there (attreid calibrate --data or --footage)"]


def percents(a: float, b: float) -> tuple[str, str]:
    """Two probabilities as percentages with the fewest decimals (1 to 6) that tell them apart
    (99.959 % and 99.972 % rather than 100.0 % and 100.0 %)."""
    for places in range(1, 7):
        left, right = f"{a:.{places}%}", f"{b:.{places}%}"
        if left != right or a == b:
            return left, right
    return left, right


@dataclass(frozen=True)
class Verdict:
    """The answer for one pair of crops.

    Attributes:
        distance: their embedding distance (the checkpoint's metric).
        probability: calibrated P(same person) (prior 0.5), None when uncalibrated.
        same: distance <= threshold and both crops pass the person check; None when
            uncalibrated.
        far: the operating point; threshold: its distance (None when uncalibrated).
        person: P(person) of each crop, None without a person check.
        note: "" or why there is no probability, or which crop is not a person.
        unsupported: "" or why the calibration pairs cannot support ``far``
            (:meth:`Calibration.support`): ``same`` then rests on a threshold whose FAR is
            not known.
        prior: the P(same) a pair had before its distance was seen (0.5 for one pair; a
            search's is far smaller, :meth:`Calibration.search_point`).
        p_threshold: P(same) at the threshold under that prior: ``same`` is
            ``probability >= p_threshold`` (the mapping is monotone) unless a crop fails the
            person check; None when uncalibrated.
        drift: lines saying the crops look unlike the calibration's data
            (:func:`unlike_people`).
    """

    distance: float
    probability: float | None
    same: bool | None
    far: float
    threshold: float | None
    note: str = ""
    person: tuple[float, float] | None = None
    unsupported: str = ""
    prior: float = 0.5
    p_threshold: float | None = None
    drift: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "calibrated": self.probability is not None,
                "rule": self.rule()}

    def rule(self) -> str:
        """One line that links the probability and the decision (or says why there is
        none): ``not the same person: P(same) 97.9 % < 99.6 %, the P(same) at FAR 0.001's
        distance threshold 0.412``."""
        if self.probability is None or self.p_threshold is None or self.threshold is None:
            return self.note or "uncalibrated"
        answer = "the same person" if self.same else "not the same person"
        mine, cut = percents(self.probability, self.p_threshold)
        if self.note and not self.same and self.distance <= self.threshold:
            return (f"{answer}: P(same) {mine} >= {cut} would pass at FAR {self.far:.1g}, but "
                    f"{self.note}")
        sign = ">=" if self.distance <= self.threshold else "<"
        return (f"{answer}: P(same) {mine} {sign} {cut}, the P(same) at the threshold of FAR "
                f"{self.far:.1g} (distance {self.threshold:.4g})")


def verdict(distance: float, calibration: Calibration | None, far: float = DEFAULT_FAR,
            note: str = "", person: Sequence[float] | None = None) -> Verdict:
    """A :class:`Verdict` for one distance (and the two crops' P(person), when checked)."""
    if calibration is None:
        return Verdict(float(distance), None, None, far, None, note or "uncalibrated")
    threshold = calibration.threshold(far)
    same = bool(distance <= threshold)
    pair = None if person is None else (float(person[0]), float(person[1]))
    cut = calibration.person_threshold
    if pair is not None and min(pair) < cut:
        failed = [name for name, p in zip(("first", "second"), pair) if p < cut]
        what = "neither crop looks" if len(failed) == 2 else f"the {failed[0]} crop does not look"
        note = (f"{what} like a person (P(person) " + ", ".join(f"{p:.1%}" for p in pair) +
                f"; the check passes {cut:.1%} and above)")
        same = False
    drift = tuple(unlike_people(calibration, pair)) if pair is not None else ()
    return Verdict(float(distance), float(calibration.probability(distance)), same, far,
                   threshold, note, pair, calibration.support(far), 0.5,
                   float(calibration.probability(threshold)), drift)


def search_verdict(distance: float, calibration: Calibration, point: SearchPoint,
                   person: Sequence[float] | None = None) -> Verdict:
    """The :class:`Verdict` of a search hit at a search's operating point: P(same) under the
    search's prior, "same" at its threshold (and both crops passing the person check)."""
    pair = None if person is None else (float(person[0]), float(person[1]))
    same = bool(distance <= point.threshold)
    note = ""
    if pair is not None and min(pair) < calibration.person_threshold:
        note, same = "not a person (P(person) below the check's " \
                     f"{calibration.person_threshold:.1%})", False
    return Verdict(float(distance), float(calibration.search_probability(distance, point)),
                   same, point.far, point.threshold, note, pair, point.unsupported, point.prior,
                   point.p_cut)


class Verifier:
    """Is this the same person? Two crops in, a :class:`Verdict` out.

    Example::

        verifier = Verifier.open("runs/cpu/best.pt")      # finds best.calibration.json
        verifier.verify("a.jpg", "b.jpg").probability
    """

    def __init__(self, predictor: Any, calibration: Calibration | None, note: str = "",
                 far: float = DEFAULT_FAR) -> None:
        check_far(far)
        if calibration is not None:
            calibration.threshold(far)  # a stored operating point, or a CalibrationError
        self.predictor, self.calibration, self.note, self.far = predictor, calibration, note, far
        self.choice: Any = None  # the backend chosen (attreid.inference.backends.Choice)

    @classmethod
    def open(cls, checkpoint: Path | str, calibration: Path | str | None = None,
             far: float = DEFAULT_FAR, backend: str = "auto", device: str | None = None,
             flip: bool | None = None) -> "Verifier":
        """The checkpoint's predictor and its calibration (``calibration``, else the file
        beside the checkpoint, else none: verdicts then carry only the distance). ``flip``:
        embed each crop with its mirror image; default the calibration's setting (False
        without one); a calibration made with the other setting does not apply.

        Raises:
            CalibrationError: an explicit calibration file that is missing or does not apply.
            CheckpointError: the checkpoint cannot be read.
        """
        from attreid.inference.backends import load_predictor

        if flip is None:
            flip = Calibration.load(calibration).flip if calibration else \
                _flip_beside(checkpoint)
        predictor, choice = load_predictor(checkpoint, backend, device=device, flip=flip)
        found, note = find_calibration(checkpoint, predictor.checkpoint_sha256, flip,
                                       predictor.distance, calibration)
        verifier = cls(predictor, found, note, far)
        verifier.choice = choice
        return verifier

    def verify(self, a: Any, b: Any, far: float | None = None) -> Verdict:
        """Compare two crops (paths or PIL images)."""
        embeddings = self.predictor.predict([a, b]).embeddings  # (2, D)
        return self.compare(embeddings[0], embeddings[1], far)

    def compare(self, a: Any, b: Any, far: float | None = None) -> Verdict:
        """Compare two embeddings (D,) made by this verifier's predictor."""
        return compare_embeddings(a, b, self.predictor.distance, self.calibration,
                                  self.far if far is None else far, self.note)


def compare_embeddings(a: Any, b: Any, metric: str, calibration: Calibration | None,
                       far: float = DEFAULT_FAR, note: str = "") -> Verdict:
    """The :class:`Verdict` for two embeddings (D,): their ``metric`` distance, and with a
    calibration P(same), both crops' P(person) and the decision at ``far``."""
    from attreid.metrics.distance import pairwise_distance  # torch: only to measure
    a, b = np.asarray(a), np.asarray(b)
    distance = float(pairwise_distance(a[None], b[None], metric)[0, 0])
    person = None if calibration is None else calibration.person_probability(np.stack([a, b]))
    return verdict(distance, calibration, far, note, person)


def _flip_beside(checkpoint: Path | str) -> bool:
    """The flip setting of the calibration beside ``checkpoint`` (False without one)."""
    try:
        return Calibration.load(calibration_path(checkpoint)).flip
    except CalibrationError:
        return False


def summarize(calibration: Calibration) -> list[str]:
    """Lines for a terminal: method, operating points, EER."""
    lines = [f"calibration: {calibration.method} on {calibration.data.get('pairs', '?')}"]
    for key, t in sorted(calibration.thresholds.items(), key=lambda kv: -float(kv[0])):
        why = calibration.unsupported.get(key)
        lines.append(f"  FAR {float(key):g}: threshold {t:.4g}, TAR {calibration.tar[key]:.2%}"
                     + (f"; {why}" if why else ""))
    lines.append(f"  EER {calibration.eer['rate']:.2%} at {calibration.eer['threshold']:.4g}")
    p = calibration.person
    lines.append("  person check: " + (f"fitted on {p['people']:,} people and {p['distractors']:,} "
                                       "distractor crops" if p else "none (too few distractors)"))
    return lines
