"""From a distance to P(same person): a calibration fitted on labelled pairs, stored beside the
checkpoint, and a :class:`Verifier` that answers "is this the same person?" for two crops.

The mapping is monotone (a larger distance never means a more likely match) and fitted with the
genuine and impostor pairs weighted to half each, so it gives P(same) for a pair that, before
the crops were looked at, was as likely the same person as not (prior 0.5). Another prior (e.g.
the rate of true matches in a gallery) shifts the odds: :meth:`Calibration.probability`.

Methods (scikit-learn's):

* ``platt``: logistic regression on the distance, P = 1 / (1 + exp(-(a d + b))). Two numbers,
  smooth, extrapolates past the fitted range; assumes the log-odds are linear in d.
* ``isotonic``: the best monotone step function (pool-adjacent-violators), interpolated
  linearly; no shape assumed, flat beyond the fitted range.

The operating points come from the pairs themselves, not from the mapping: the thresholds at
FAR 1e-2 / 1e-3 / 1e-4 and the EER's (:mod:`attreid.metrics.verification`). A FAR the pairs
cannot support (fewer than 10 / FAR impostor pairs, :func:`~attreid.metrics.verification.far_support`)
is stored with its reason in :attr:`Calibration.unsupported`; a :class:`Verdict` made at it says
so (``unsupported``), and ``calibrate``, ``verify`` and ``search`` print it.

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from attreid import __version__
from attreid.errors import AttreidError
from attreid.metrics.distance import pairwise_distance
from attreid.metrics.verification import (
    FARS,
    SUPPORT_PAIRS,
    PairDistances,
    accept_rates,
    balanced_weights,
    equal_error_rate,
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
PERSON_MIN_DISTRACTORS = 10
"""Distractor crops needed to fit the person check (fewer: no check). A floor, not a quality
bar: benchmarks/verification.py measures the check on held-out identities (AUC)."""
PERSON_REFUSES = 0.01
"""Share of the calibration set's people the person check may refuse (sets its threshold)."""
PERSON_C = 0.01
"""Inverse L2 strength of the person check's logistic regression (0.01-1 measured alike on
Market-1501: held-out AUC 0.960 / 0.959 / 0.955)."""


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
            return f"it was fitted with flip {'on' if self.flip else 'off'}, these embeddings " \
                   f"have it {'on' if flip else 'off'}"
        if self.metric != metric:
            return f"it maps {self.metric} distances, these are {metric}"
        return None


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
                    seed: int = 0, person: dict[str, Any] | None = None) -> Calibration:
    """Fit the mapping on ``pairs`` (every genuine pair and up to :data:`FIT_IMPOSTORS` of the
    impostor sample, weighted to half each) and record the operating points.

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
    return Calibration(method, metric, flip, checkpoint_sha256, params, thresholds, tar,
                       {"rate": rate, "threshold": at}, data or {},
                       datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                       person=person, unsupported=unsupported)


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


def score_person(check: dict[str, Any], embeddings: Any, metric: str) -> np.ndarray:
    """P(person) of each embedding (N, D) by a person check of :func:`fit_person`."""
    x = _for_metric(np.atleast_2d(np.asarray(embeddings, dtype=np.float64)), metric)
    z = x @ np.asarray(check["coef"]) + check["intercept"]
    return 1.0 / (1.0 + np.exp(-z))


def _for_metric(x: np.ndarray, metric: str) -> np.ndarray:
    """The rows the person check sees: unit vectors for a cosine checkpoint."""
    if metric != "cosine":
        return x
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_person(embeddings: np.ndarray, is_person: np.ndarray, metric: str
               ) -> dict[str, Any] | None:
    """The person check (see the module docstring) from embeddings (N, D) and whether each crop
    shows a person (N,) bool; None with fewer than :data:`PERSON_MIN_DISTRACTORS` distractors."""
    from sklearn.linear_model import LogisticRegression

    distractors = int((~is_person).sum())
    if distractors < PERSON_MIN_DISTRACTORS or not is_person.any():
        return None
    x = _for_metric(np.asarray(embeddings, dtype=np.float64), metric)
    model = LogisticRegression(C=PERSON_C, class_weight="balanced", max_iter=5000)
    model.fit(x, is_person)
    p = model.predict_proba(x)[:, 1]
    threshold = float(np.quantile(p[is_person], PERSON_REFUSES))
    return {"coef": model.coef_[0].tolist(), "intercept": float(model.intercept_[0]),
            "threshold": threshold, "refuses": PERSON_REFUSES,
            "distractors_passing": float(np.mean(p[~is_person] >= threshold)),
            "people": int(is_person.sum()), "distractors": distractors}


def _fit_platt(d: np.ndarray, same: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=np.inf).fit(d[:, None], same, sample_weight=weights)
    return {"a": float(model.coef_[0, 0]), "b": float(model.intercept_[0])}


def _fit_isotonic(d: np.ndarray, same: np.ndarray, weights: np.ndarray) -> dict[str, list]:
    from sklearn.isotonic import IsotonicRegression

    model = IsotonicRegression(increasing=False, y_min=0.0, y_max=1.0, out_of_bounds="clip")
    model.fit(d, same, sample_weight=weights)
    return {"x": model.X_thresholds_.tolist(), "y": model.y_thresholds_.tolist()}


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
    """

    distance: float
    probability: float | None
    same: bool | None
    far: float
    threshold: float | None
    note: str = ""
    person: tuple[float, float] | None = None
    unsupported: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "calibrated": self.probability is not None}


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
    return Verdict(float(distance), float(calibration.probability(distance)), same, far,
                   threshold, note, pair, calibration.support(far))


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

