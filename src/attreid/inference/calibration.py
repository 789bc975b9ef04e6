"""From a distance to P(same person): a calibration fitted on labelled pairs, stored beside the
checkpoint; :mod:`attreid.inference.verdicts` answers "is this the same person?" with it.

The mapping is monotone (a larger distance never means a more likely match) and fitted with the
genuine and impostor pairs weighted to half each, so it gives P(same) for a pair that, before
the crops were looked at, was as likely the same person as not (prior 0.5). Another prior (e.g.
the rate of true matches in a gallery) shifts the odds: :meth:`Calibration.probability`.

Methods (scikit-learn's):

* ``platt``: logistic regression on the distance, P = 1 / (1 + exp(-(a d + b))). Two numbers,
  smooth, extrapolates past the fitted range; assumes the log-odds are linear in d.
* ``isotonic``: the best monotone step function (pool-adjacent-violators), interpolated
  linearly; no shape assumed, flat beyond the fitted range.

**One pair against a search.** ``verify`` asks about one pair (one-to-one): P(same) at the
prior 0.5 and "same" at a FAR of 1e-3, the two linked by one rule (:meth:`Verdict.rule`: "same"
exactly when P(same) reaches its value at the FAR's threshold). A search compares one query
with N crops (one-to-many, as NIST's face identification tests count it): at a per-pair FAR
of 1e-3 a 20,000-crop gallery lets about 20 strangers per query through, and against a prior of
0.5 each near stranger reads "99 %". A search therefore marks hits at a stated number of
strangers per query (the false-positive identification rate, :data:`DEFAULT_FPIR`), whose
per-pair FAR is that over N (from :attr:`Calibration.far_curve`), and gives P(same) as fitted on
the hits of the calibration set's own searches (:attr:`Calibration.search`; files without it:
under the prior ``matches / N``, :data:`DEFAULT_MATCHES`): :meth:`Calibration.search_point`.
The answers themselves are in :mod:`attreid.inference.verdicts`.

**Where it holds.** A calibration records the distributions it was fitted on (impostor and
genuine distances, P(person) of its crops: :attr:`Calibration.fitted`); the drift checks of
:mod:`attreid.inference.verdicts` compare a gallery or single crops with them and say so, with
the fix (a calibration fitted on the new camera network).

The operating points come from the pairs themselves, not from the mapping: the thresholds at
FAR 1e-2 / 1e-3 / 1e-4 and the EER's (:mod:`attreid.metrics.verification`). A FAR the pairs
cannot support (fewer than 10 / FAR impostor pairs,
:func:`~attreid.metrics.verification.far_support`) is stored with its reason in
:attr:`Calibration.unsupported`; a verdict made at it says so (``unsupported``), and
``calibrate``, ``verify`` and ``search`` print it.

A distance says nothing about whether a crop shows a person at all: a plain red rectangle lies
as near to the gallery's junk crops as a person to his other views. Where the labelled set has
distractor crops (Market-1501's identity 0: background, partial or no one in particular), the
calibration also holds a *person check*: a logistic regression on the embedding, people against
distractors (weighted half each), giving P(person) of any crop
(:meth:`Calibration.person_probability`). A crop passes when its P(person) is at least the
check's threshold, set on the calibration set so that it refuses :data:`PERSON_REFUSES` (1 %)
of the people there: the check is for junk (a red rectangle scores 0.2 %), not for blurry
people. A pair is called the same person only when both crops pass.
"""

from __future__ import annotations

import datetime
import json
import re
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from attreid import __version__
from attreid.errors import AttreidError
from attreid.inference.fits import quantiles, score_person
from attreid.metrics.verification import (
    FARS,
    SUPPORT_PAIRS,
    TAIL_FAR,
    PairDistances,
    accept_rates,
    balanced_weights,
    equal_error_rate,
    far_curve,
    far_support,
    threshold_at_far,
)
from attreid.utils.files import atomic_write_text
from attreid.zoo import resolve_checkpoint

FORMAT = "attreid-calibration-v1"
METHODS: tuple[str, ...] = ("platt", "isotonic")
DEFAULT_FAR = 1e-3
"""The operating point used when none is named (verify, search marks)."""
FIT_IMPOSTORS = 200_000
"""Impostor pairs (drawn from the sample) the mapping is fitted on, with every genuine pair."""
DEFAULT_FPIR = 0.01
"""A search's default operating point: strangers marked "same person" per query (the
false-positive identification rate of NIST's 1:N face tests, as an expected count): one in
100 queries, whatever the gallery's size."""
DEFAULT_MATCHES = 10.0
"""True matches a search expects in a gallery (its prior is this over the gallery's size);
see :meth:`Calibration.search_point` and docs/RESULTS.md part 4 for the measurement."""


class CalibrationError(AttreidError, ValueError):
    """A calibration file is missing, unreadable, or made for another checkpoint or setting."""


def far_key(far: float) -> str:
    """``1e-3`` -> ``"1e-03"``: the key of an operating point in the file."""
    return f"{far:.0e}"


@dataclass(frozen=True)
class Calibration:
    """A fitted distance -> P(same person) mapping and the operating points of its data.

    Attributes:
        method: ``platt`` or ``isotonic``.
        metric: the distance it maps (the checkpoint's: ``euclidean``, ``cosine``, ...).
        flip: whether the embeddings averaged each crop with its mirror image.
        checkpoint_sha256: the checkpoint whose embeddings it was fitted on.
        params: ``{"a", "b"}`` (platt) or ``{"x", "y"}`` (isotonic: the step function's knots).
        thresholds: ``far_key(far)`` -> distance threshold (accept ``d <= t``).
        tar: ``far_key(far)`` -> TAR at that threshold on the calibration pairs.
        eer: ``{"rate", "threshold"}``.
        data: where the pairs came from (dataset, split, crops, identities, pair counts).
        person: the person check, ``{"coef": [D floats], "intercept", "people",
            "distractors"}``, or None when the set had too few distractors to fit one.
        unsupported: ``far_key(far)`` -> why the pairs cannot support that operating point
            (one line, ``unsupported: ...``); its threshold is kept but every verdict at it
            carries the reason.
        far_curve: ``{"far": [...], "distance": [...]}``, thresholds of FARs from 5e-2 down
            to the smallest the pairs support (:func:`~attreid.metrics.verification.far_curve`),
            for a search's operating point; {} in files from before it.
        fitted: what the calibration was fitted on, for the drift check:
            ``impostor_quantiles`` (distances of impostor pairs), ``genuine_quantiles`` and,
            with a person check, ``person_quantiles`` (P(person) of its people's crops) and
            ``crop_person_quantiles`` (of all its crops), each
            :data:`~attreid.inference.fits.QUANTILES` values; {} in files from before it.
        search: P(same) of a search hit (:func:`~attreid.inference.fits.fit_search`):
            ``{"a", "b", "queries", "gallery", "matches", "top"}``, or None (files from
            before it): a search then uses the pair mapping under the prior
            ``DEFAULT_MATCHES / N``.
        attributes: task -> when its values are sure and whether its head beats the majority
            class (:func:`~attreid.inference.attribute_confidence.fit_attribute_confidence`),
            or None (no attribute labels, or a file from before it).
    """

    method: str
    metric: str
    flip: bool
    checkpoint_sha256: str
    params: dict[str, Any]
    thresholds: dict[str, float]
    tar: dict[str, float]
    eer: dict[str, float]
    data: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    attreid_version: str = __version__
    person: dict[str, Any] | None = None
    unsupported: dict[str, str] = field(default_factory=dict)
    far_curve: dict[str, list[float]] = field(default_factory=dict)
    fitted: dict[str, Any] = field(default_factory=dict)
    search: dict[str, Any] | None = None
    attributes: dict[str, dict[str, Any]] | None = None

    @property
    def person_threshold(self) -> float:
        """P(person) a crop needs to pass the person check (0.5 in files without one)."""
        return float((self.person or {}).get("threshold", 0.5))

    def person_probability(self, embeddings: Any) -> np.ndarray | None:
        """P(person) of each embedding (N, D) (cosine checkpoints: of the unit vectors), or
        None without a person check."""
        return None if self.person is None else score_person(self.person, embeddings,
                                                              self.metric)

    def probability(self, distances: Any, prior: float = 0.5) -> np.ndarray:
        """P(same person) of each distance (any shape), for a pair that was the same person
        with probability ``prior`` before it was looked at (0.5: the fitted balance)."""
        d = np.asarray(distances, dtype=np.float64)
        if self.method == "platt":
            p = 1.0 / (1.0 + np.exp(-(self.params["a"] * d + self.params["b"])))
        else:
            p = np.interp(d, self.params["x"], self.params["y"])
        if prior == 0.5:
            return p
        odds = p / np.maximum(1.0 - p, 1e-300) * (prior / (1.0 - prior))
        return odds / (1.0 + odds)

    def log_odds(self, distances: Any) -> np.ndarray:
        """log(P / (1 - P)) of P(same person) at each distance (prior 0.5): for Platt ``a d + b``
        exactly (it does not saturate where P rounds to 1); for isotonic, of P clipped to
        [1e-6, 1 - 1e-6]."""
        d = np.asarray(distances, dtype=np.float64)
        if self.method == "platt":
            return self.params["a"] * d + self.params["b"]
        p = np.clip(self.probability(d), 1e-6, 1 - 1e-6)
        return np.log(p / (1 - p))

    def threshold(self, far: float = DEFAULT_FAR) -> float:
        """The distance threshold at ``far`` (see :meth:`support`: it may be unsupported).

        Raises:
            CalibrationError: ``far`` is not one of the stored operating points.
        """
        key = far_key(far)
        if key not in self.thresholds:
            raise CalibrationError(f"FAR {far:g} is not an operating point of this calibration;"
                                   f" it has {', '.join(sorted(self.thresholds))}")
        return self.thresholds[key]

    def support(self, far: float = DEFAULT_FAR) -> str:
        """"" when the calibration pairs support the operating point ``far``, else one line:
        ``FAR 0.0001 is unsupported: 7,628 impostor pairs support FAR down to ~0.0013 (its
        threshold is used anyway; FAR 0.01 is supported)``."""
        why = self.unsupported.get(far_key(far))
        if not why:
            return ""
        usable = [f"{float(k):g}" for k in sorted(self.thresholds, key=float, reverse=True)
                  if k not in self.unsupported]
        return (f"FAR {far:g} is {why} (its threshold is used anyway; " +
                (f"FAR {' or '.join(usable)} is supported" if usable else
                 "calibrate on more identities") + ")")

    def threshold_at(self, far: float) -> tuple[float, str]:
        """The distance threshold of any FAR (per pair), interpolated in log FAR on
        :attr:`far_curve` (on the three stored operating points in older files), and "" or
        why the pairs cannot support it (one line; the threshold is then the one of the
        smallest FAR they support, :meth:`lowest_far`)."""
        fars, dist = self._curve()
        lowest = self.lowest_far()
        why = ""
        if far < lowest * (1 - 1e-9):
            why = (f"FAR {far:.3g} per pair is below the {lowest:.3g} its pairs support; the "
                   f"threshold of {lowest:.3g} is used (calibrate on more crops)")
            far = lowest
        # log FAR ascending for np.interp
        order = np.argsort(fars)
        t = float(np.interp(np.log10(far), np.log10(fars[order]), dist[order]))
        return t, why

    def _curve(self) -> tuple[np.ndarray, np.ndarray]:
        """(FARs, thresholds) of :attr:`far_curve`, or of the stored operating points."""
        if self.far_curve:
            return (np.asarray(self.far_curve["far"], dtype=np.float64),
                    np.asarray(self.far_curve["distance"], dtype=np.float64))
        keys = sorted(self.thresholds, key=float, reverse=True)
        return (np.array([float(k) for k in keys]),
                np.array([self.thresholds[k] for k in keys]))

    def lowest_far(self) -> float:
        """The smallest per-pair FAR the calibration's pairs support."""
        if self.far_curve:
            return float(self.far_curve["far"][-1])
        keys = sorted(self.thresholds, key=float, reverse=True)
        kept = [float(k) for k in keys if k not in self.unsupported]
        return kept[-1] if kept else float(keys[0])

    def search_point(self, gallery_size: int, fpir: float = DEFAULT_FPIR,
                     matches: float = DEFAULT_MATCHES) -> "SearchPoint":
        """The operating point of a search in a gallery of ``gallery_size`` crops: its "same
        person" mark lets about ``fpir`` strangers per query through (the threshold at a
        per-pair FAR of ``fpir / gallery_size``: each query meets ``gallery_size``
        strangers), and the rule of its P(same) (:meth:`search_probability`).

        Raises:
            CalibrationError: ``fpir`` or ``matches`` not positive, or an empty gallery.
        """
        if not fpir > 0 or not matches > 0 or gallery_size < 1:
            raise CalibrationError(f"a search's operating point needs fpir > 0, matches > 0 "
                                   f"and a gallery: got {fpir}, {matches}, {gallery_size} "
                                   "crops")
        far = max(min(fpir / gallery_size, TAIL_FAR), self.lowest_far())
        threshold, why = self.threshold_at(min(fpir / gallery_size, TAIL_FAR))
        if self.search:
            prior = float(self.search["matches"]) / float(self.search["gallery"])
        else:
            prior = min(0.5, matches / gallery_size)
        point = SearchPoint(fpir, gallery_size, far, threshold, prior, 0.0, why,
                            "hits" if self.search else "prior")
        return replace(point, p_cut=float(self.search_probability(threshold, point)))

    def search_probability(self, distances: Any, point: "SearchPoint") -> np.ndarray:
        """P(same person) of search hits at ``distances``: with :attr:`search`, the logistic
        fitted on the hits of the calibration set's own searches (:func:`fit_search`); else
        the pair mapping under ``point.prior``."""
        d = np.asarray(distances, dtype=np.float64)
        if point.kind == "hits" and self.search:
            return 1.0 / (1.0 + np.exp(-(self.search["a"] * d + self.search["b"])))
        return self.probability(d, point.prior)

    def save(self, path: Path | str) -> Path:
        """Write the calibration as JSON (atomically)."""
        record = {"format": FORMAT, **asdict(self)}
        atomic_write_text(Path(path), json.dumps(record, indent=1) + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: Path | str) -> "Calibration":
        """Read a file :meth:`save` wrote.

        Raises:
            CalibrationError: missing, not JSON, another format, or keys missing (named).
        """
        path = Path(path)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            raise CalibrationError(f"{path}: no such calibration file; make one with "
                                   "attreid calibrate CHECKPOINT --data DIR") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CalibrationError(f"{path}: not a calibration file ({exc})") from None
        if not isinstance(record, dict) or record.pop("format", None) != FORMAT:
            raise CalibrationError(f"{path}: not a calibration file (expected format {FORMAT})")
        fields = set(cls.__dataclass_fields__)
        missing = sorted(f for f in fields - set(record) if cls.__dataclass_fields__[f].default
                         is MISSING_FIELD and cls.__dataclass_fields__[f].default_factory
                         is MISSING_FIELD)
        unknown = sorted(set(record) - fields)
        if missing or unknown:
            raise CalibrationError(f"{path}: damaged calibration file (" + "; ".join(
                part for part in (f"missing {', '.join(missing)}" if missing else "",
                                  f"unknown {', '.join(unknown)}" if unknown else "")
                if part) + "); make it again with attreid calibrate")
        if "unsupported" not in record:  # a file from before the support check
            record["unsupported"] = _support_from_counts(record)
        return cls(**record)

    def check(self, checkpoint_sha256: str, flip: bool, metric: str) -> str | None:
        """Why this calibration does not apply to embeddings of that checkpoint and setting
        (one line), or None when it does."""
        if self.checkpoint_sha256 != checkpoint_sha256:
            return "it was fitted on another checkpoint"
        if self.flip != flip:
            return (f"it was fitted with flip {'on' if self.flip else 'off'}, these embeddings "
                    f"have it {'on' if flip else 'off'}: build the index with"
                    f"{'' if self.flip else 'out'} --flip, or calibrate again with"
                    f"{'' if flip else 'out'} --flip")
        if self.metric != metric:
            return f"it maps {self.metric} distances, these are {metric}"
        return None


@dataclass(frozen=True)
class SearchPoint:
    """A search's operating point (:meth:`Calibration.search_point`).

    Attributes:
        fpir: strangers marked per query (expected); gallery_size: crops searched.
        far: the per-pair FAR used, ``fpir / gallery_size`` or, below what the calibration
            supports, the smallest it supports; threshold: its distance.
        prior: P(same) of a hit before its distance is seen: the calibration's searches'
            (matches over gallery) with ``kind`` "hits", else ``matches / gallery_size``.
        p_cut: P(same) at the threshold: a hit is marked exactly when its P(same) is at
            least this (the mapping is monotone) and both crops pass the person check.
        unsupported: "" or why the calibration's pairs cannot support ``far``.
        kind: "hits" (P(same) fitted on search hits) or "prior" (the pair mapping under
            ``prior``).
    """

    fpir: float
    gallery_size: int
    far: float
    threshold: float
    prior: float
    p_cut: float
    unsupported: str = ""
    kind: str = "prior"

    def rule(self) -> str:
        """One line linking the mark and the probability; the strangers per query are those
        of the FAR used (more than ``fpir`` when the calibration cannot support it)."""
        where = ("P(same) as fitted on the calibration's own searches" if self.kind == "hits"
                 else f"P(same) for {self.prior * self.gallery_size:g} true match(es) in the "
                      "gallery")
        strangers = self.far * self.gallery_size
        asked = (f" (asked for {self.fpir:g}: its pairs support no fewer)"
                 if strangers > self.fpir * (1 + 1e-6) else "")
        return (f"✓ = P(same) >= {self.p_cut:.2%} (distance <= {self.threshold:.4g}): about "
                f"{strangers:.2g} stranger(s) marked per query in {self.gallery_size:,} crops"
                f"{asked} (FAR {self.far:.1e} per pair); {where}")


def check_far(far: float) -> float:
    """``far`` when it is one of :data:`FARS`, else a CalibrationError naming them."""
    if far_key(far) not in {far_key(f) for f in FARS}:
        raise CalibrationError(f"FAR {far:g} is not an operating point; use one of "
                               f"{', '.join(f'{f:g}' for f in FARS)}")
    return far


def calibration_path(checkpoint: Path | str) -> Path:
    """Where a checkpoint's calibration lives: ``best.pt`` -> ``best.calibration.json``; a
    shipped model's (``market1501``) is shipped beside its file."""
    checkpoint = resolve_checkpoint(checkpoint)
    return checkpoint.with_name(checkpoint.stem + ".calibration.json")


def find_calibration(checkpoint: Path | str, checkpoint_sha256: str, flip: bool, metric: str,
                     path: Path | str | None = None) -> tuple[Calibration | None, str]:
    """The calibration at ``path`` (default: beside the checkpoint) when it applies.

    Returns:
        (calibration, "") or (None, why it is uncalibrated, one line).
    Raises:
        CalibrationError: an explicit ``path`` that is missing, damaged or does not apply.
    """
    file = Path(path) if path else calibration_path(checkpoint)
    if path is None and not file.exists():
        return None, (f"uncalibrated: no {file.name} beside the checkpoint (attreid calibrate "
                      "makes one)")
    try:
        calibration = Calibration.load(file)
    except CalibrationError as exc:
        if path is not None:
            raise
        return None, f"uncalibrated: {exc}"
    why = calibration.check(checkpoint_sha256, flip, metric)
    if why and path is not None:
        raise CalibrationError(f"{file}: does not apply: {why}")
    return (None, f"uncalibrated: {file.name} does not apply ({why})") if why else (
        calibration, "")


def fit_calibration(pairs: PairDistances, method: str, metric: str, flip: bool,
                    checkpoint_sha256: str, data: dict[str, Any] | None = None,
                    seed: int = 0, person: dict[str, Any] | None = None,
                    search: dict[str, Any] | None = None,
                    search_pairs: PairDistances | None = None) -> Calibration:
    """Fit the mapping on ``pairs`` (every genuine pair and up to :data:`FIT_IMPOSTORS` of the
    impostor sample, weighted to half each) and record the operating points; ``search``
    (:func:`fit_search`) and ``search_pairs`` (the pairs without distractor-distractor
    ones, ``pair_distances(..., people=...)``, whose impostor tail sets a search's
    thresholds; default ``pairs``) for searches.

    Raises:
        ValueError: an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {METHODS}")
    rng = np.random.default_rng(seed)
    impostor = pairs.impostor_sample
    if len(impostor) > FIT_IMPOSTORS:
        impostor = rng.choice(impostor, FIT_IMPOSTORS, replace=False)
    d = np.concatenate([pairs.genuine, impostor])
    same = np.concatenate([np.ones(len(pairs.genuine)), np.zeros(len(impostor))])
    wg, wi = balanced_weights(len(pairs.genuine), len(impostor))
    weights = np.where(same > 0, wg, wi) * len(d)
    params = _fit_platt(d, same, weights) if method == "platt" else _fit_isotonic(d, same, weights)
    thresholds = {far_key(f): threshold_at_far(pairs, f) for f in FARS}
    tar = {k: accept_rates(pairs, t)[0] for k, t in thresholds.items()}
    unsupported = {far_key(f): why for f in FARS
                   if (why := far_support(pairs, f, thresholds[far_key(f)])) is not None}
    rate, at = equal_error_rate(pairs)
    fars, distances = far_curve(search_pairs or pairs)
    fitted = {"impostor_quantiles": quantiles(pairs.impostor_sample),
              "genuine_quantiles": quantiles(pairs.genuine),
              "impostors": int(pairs.num_impostor), "genuine": int(len(pairs.genuine))}
    if person is not None and "quantiles" in person:
        fitted["person_quantiles"] = list(person["quantiles"])
        fitted["crop_person_quantiles"] = list(person["all_quantiles"])
    return Calibration(method, metric, flip, checkpoint_sha256, params, thresholds, tar,
                       {"rate": rate, "threshold": at}, data or {},
                       datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       person=person, unsupported=unsupported,
                       far_curve={"far": fars.tolist(), "distance": distances.tolist()},
                       fitted=fitted, search=search)


def _support_from_counts(record: dict[str, Any]) -> dict[str, str]:
    """The unsupported operating points of a file written before they were stored, from its
    impostor count (``data["pairs"]``: "G genuine + N impostor pairs"); {} when it has none."""
    found = re.search(r"([\d,]+) impostor pairs", str(record.get("data", {}).get("pairs", "")))
    if found is None:
        return {}
    n = int(found.group(1).replace(",", ""))
    return {key: f"unsupported: {n:,} impostor pairs support FAR down to "
                 f"~{SUPPORT_PAIRS / max(n, 1):.2g}"
            for key in record.get("thresholds", {}) if float(key) * n < SUPPORT_PAIRS - 1e-9}


def _fit_platt(d: np.ndarray, same: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=np.inf).fit(d[:, None], same, sample_weight=weights)
    return {"a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])}


def _fit_isotonic(d: np.ndarray, same: np.ndarray, weights: np.ndarray) -> dict[str, list]:
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(increasing=False, y_min=0.0, y_max=1.0, out_of_bounds="clip")
    model.fit(d, same, sample_weight=weights)
    return {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}
