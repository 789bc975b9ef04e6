"""Queries on a :class:`GalleryIndex`: by image, by attributes, both, by camera, re-ranked.

Attribute constraints are ``task=value`` pairs with the class names of
:data:`attreid.schema.TASKS` (``gender=female``, ``backpack=yes``, ``upcolor=red``). How well a
crop matches is the product of its predicted probabilities of those values (``match``).

Attribute-only queries rank every crop by ``match`` (:data:`DESCRIPTION_MIN_PROB` = 0: nothing
hidden). Measured on Market-1501 (docs/RESULTS.md, part 5), this ranks best among the product,
the min, the mean and a calibrated product; a cut at 0.5 (``min_prob=0.5``) costs 8-11 mAP points
by hiding crops of the person whose predicted probability fell below it.

Image and attributes together: the constraints (and cameras) *filter* the gallery (a crop
passes when each probability is at least ``min_prob``, :data:`IMAGE_MIN_PROB` = 0.5 by default),
the image *ranks* what is left by embedding distance (FAISS search restricted to the allowed
ids).

Only the tasks the index's model was trained on (:attr:`GalleryIndex.trained_tasks`) can be
searched by: a constraint on another task (its head never saw a label, its "predictions" are
noise) is a :class:`QueryError` naming the task. An index of a re-ID-only model is searched
by image only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from attreid.errors import AttreidError
from attreid.inference.calibration import DEFAULT_FAR, Calibration, find_calibration, verdict
from attreid.schema import TASKS
from attreid.search.index import GalleryIndex, GalleryIndexError
from attreid.search.metadata import Entry
from attreid.search.vectors import prepare_vectors

DESCRIPTION_MIN_PROB = 0.0
"""Default ``min_prob`` of attribute-only queries: rank every crop, hide none."""
IMAGE_MIN_PROB = 0.5
"""Default ``min_prob`` of constraints added to an image query: they filter."""

RERANK_DEPTH = 100
"""Candidates re-ranked by k-reciprocal re-ranking (the first ``max(k, RERANK_DEPTH)``)."""

_TASKS = {t.name: t for t in TASKS}


class QueryError(AttreidError, ValueError):
    """A query is malformed: unknown attribute or value, bad k, unknown image id."""


@dataclass(frozen=True)
class Constraint:
    """``task == value`` with probability >= the query's ``min_prob``."""

    task: str
    value: str

    @property
    def column(self) -> str:
        return f"p_{self.task}_{self.value}"


def _constraint(task: str, value: str) -> Constraint:
    task, value = str(task).strip(), str(value).strip()
    if task not in _TASKS:
        raise QueryError(f"unknown attribute {task!r}; expected one of {list(_TASKS)}")
    classes = _TASKS[task].classes
    if value not in classes:
        raise QueryError(f"attribute {task!r}: unknown value {value!r}; expected one of "
                         f"{list(classes)}")
    return Constraint(task, value)


def parse_attributes(spec: str | Mapping[str, str] | None) -> list[Constraint]:
    """Constraints from ``"gender=female,backpack=yes"``, a JSON object or a mapping.

    Raises:
        QueryError: unknown attribute or value, a pair without ``=``, or a task given twice.
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            return []
        if text.startswith("{"):
            try:
                spec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise QueryError(f"attributes: invalid JSON ({exc})") from None
            if not isinstance(spec, dict):
                raise QueryError("attributes: expected a JSON object {task: value}")
        else:
            pairs = [p for p in text.split(",") if p.strip()]
            if any("=" not in p for p in pairs):
                raise QueryError(f"attributes {text!r}: expected task=value pairs separated "
                                 "by commas, e.g. gender=female,backpack=yes")
            items = [p.split("=", 1) for p in pairs]
            tasks = [t.strip() for t, _ in items]
            dupes = sorted({t for t in tasks if tasks.count(t) > 1})
            if dupes:
                raise QueryError(f"attributes: {dupes} given more than once")
            spec = {t.strip(): v for t, v in items}
    return [_constraint(task, value) for task, value in spec.items()]


def _check_min_prob(min_prob: float) -> float:
    if not 0.0 <= float(min_prob) <= 1.0:
        raise QueryError(f"min_prob={min_prob}: expected a probability in [0, 1]")
    return float(min_prob)


def _check_k(k: int) -> int:
    if int(k) < 1:
        raise QueryError(f"k={k}: expected at least 1")
    return int(k)


@dataclass(frozen=True)
class Hit:
    """One result: the crop, its distance to the query image (``None`` for attribute-only
    queries; after re-ranking, ``reranked`` and a re-ranked distance on another scale), how
    well it matches the attribute constraints (``None`` without any), and with a calibration
    the probability that it shows the query's person and whether that passes the operating
    point (``None`` when uncalibrated, re-ranked or not an image query); ``person``: P(person)
    of the crop when the calibration has a person check."""

    entry: Entry
    distance: float | None
    match: float | None
    probability: float | None = None
    same: bool | None = None
    reranked: bool = False
    person: float | None = None  # P(person) of the crop, with a calibration's person check

    def as_dict(self) -> dict[str, Any]:
        """The hit as JSON-ready values; ``name`` is :attr:`Entry.display_name` (valid UTF-8:
        the bytes of a file name that are not UTF-8 as ``\\xNN``, which no JSON encoder
        writing UTF-8 would take as they are). ``score`` names what ``distance`` is:
        ``"distance"``, ``"re-ranked distance"`` or ``None``."""
        e = self.entry
        score = None if self.distance is None else (
            "re-ranked distance" if self.reranked else "distance")
        return {"id": e.id, "name": e.display_name, "distance": self.distance, "score": score,
                "match": self.match, "probability": self.probability, "same": self.same,
                "person": self.person,
                "camera": e.camera, "frame": e.frame, "identity": e.identity,
                "attributes": e.attributes()}


def _match(entry: Entry, constraints: Sequence[Constraint]) -> float | None:
    if not constraints:
        return None
    probs = [entry.probabilities[c.task][_TASKS[c.task].classes.index(c.value)]
             for c in constraints]
    return float(np.prod(probs))


class GallerySearch:
    """Search an index by image, by attributes or both.

    Example::

        search = GallerySearch.open("runs/index")
        hits = search.by_image("query.jpg", k=10, attributes="gender=female")
        hits[0].entry.path, hits[0].distance
    """

    def __init__(self, index: GalleryIndex, predictor: Any | None = None,
                 choice: Any | None = None, calibration: Calibration | None = None,
                 calibration_note: str = "uncalibrated", far: float = DEFAULT_FAR) -> None:
        if calibration is not None:
            calibration.threshold(far)  # a stored operating point, or a CalibrationError
        self.index = index
        self.predictor = predictor
        self.choice = choice  # the backend's Choice (attreid.inference.backends), when opened
        self.calibration, self.calibration_note, self.far = calibration, calibration_note, far

    def calibration_status(self) -> dict[str, Any]:
        """Whether hits carry P(same person), and at which operating point they are marked."""
        c = self.calibration
        if c is None:
            return {"calibrated": False, "note": self.calibration_note}
        return {"calibrated": True, "method": c.method, "far": self.far,
                "threshold": c.threshold(self.far), "eer": c.eer["rate"],
                "prior": 0.5, "data": c.data.get("data", "")}

    @classmethod
    def open(cls, index: Path | str, checkpoint: Path | str | None = None,
             device: str | None = None, backend: str = "auto",
             calibration: Path | str | None = None, far: float = DEFAULT_FAR,
             model: bool = True) -> "GallerySearch":
        """Open an index and the checkpoint that made it (``checkpoint`` overrides the recorded
        path; either way its sha256 must match). An ONNX export (``.onnx``) of that checkpoint
        works too and runs with ONNX Runtime. ``backend``: how query crops are embedded
        (:mod:`attreid.inference.backends`; ``auto``: the fastest verified here).
        ``calibration``: the file mapping distance to P(same person) (default: the one beside
        the checkpoint, when it was made for it and the index's flip and distance; else hits
        carry no probability); ``far``: the operating point that marks hits as the same person.
        ``model=False`` opens the index alone (descriptions and indexed crops need no model;
        a query image then raises QueryError); the calibration is checked against the sha256
        the index recorded.

        Raises:
            GalleryIndexError: the index is missing/corrupt or the checkpoint does not match.
            CalibrationError: an explicit calibration file that is missing or does not apply.
        """
        from attreid.inference.backends import load_predictor
        from attreid.inference.onnx import ExportError
        from attreid.utils.checkpoint import CheckpointError

        opened = GalleryIndex.open(index)
        path = Path(checkpoint or opened.info["checkpoint"])
        flip, metric = bool(opened.info.get("flip")), opened.metric
        if not model:
            found, note = find_calibration(path, opened.info["checkpoint_sha256"], flip, metric,
                                           calibration)
            return cls(opened, None, None, found, note, far)
        if not path.is_file():
            raise GalleryIndexError(f"{path}: the checkpoint of index {opened.root} is not "
                                    "there; pass the checkpoint (--checkpoint) that made it")
        try:
            predictor, choice = load_predictor(path, backend, device=device,
                                               flip=bool(opened.info.get("flip")))
        except (CheckpointError, ExportError) as exc:
            raise GalleryIndexError(str(exc)) from exc
        opened.check_checkpoint(path, predictor.checkpoint_sha256)
        found, note = find_calibration(path, predictor.checkpoint_sha256, flip, metric,
                                       calibration)
        return cls(opened, predictor, choice, found, note, far)

    # ---- filters -------------------------------------------------------------------------

    def check_trained(self, constraints: Sequence[Constraint]) -> None:
        """Raise :class:`QueryError` for a constraint on a task the index's model was trained
        without (naming it, and the tasks that can be searched by)."""
        trained = self.index.trained_tasks
        untrained = [c.task for c in constraints if c.task not in trained]
        if not untrained:
            return
        names = ", ".join(untrained)
        which = "it" if len(untrained) == 1 else "them"
        searchable = (f"this index can be searched by {', '.join(trained)}" if trained else
                      "the model has no attribute predictions (re-ID only): search by image")
        raise QueryError(f"attribute {names}: the model of this index was trained without "
                         f"labels for {which}, so it cannot be searched by; {searchable}")

    def check_cameras(self, cameras: Sequence[int] | None) -> None:
        """Raise :class:`QueryError` for a camera the index holds no crop from, naming the
        index's cameras (a filter on it would silently return nothing)."""
        if not cameras:
            return
        known = self.index.cameras()
        unknown = sorted({int(c) for c in cameras} - set(known))
        if unknown:
            have = ", ".join(map(str, known)) if known else "none (no file name gave one)"
            word = "camera" if len(unknown) == 1 else "cameras"
            raise QueryError(f"{word} {', '.join(map(str, unknown))}: this index has no crop "
                             f"from {'it' if len(unknown) == 1 else 'them'}; its cameras: {have}")

    def _where(self, constraints: Sequence[Constraint], cameras: Sequence[int] | None,
               min_prob: float) -> tuple[str, list[Any]]:
        self.check_trained(constraints)
        self.check_cameras(cameras)
        clauses, params = ["1"], []
        for c in constraints:
            clauses.append(f"{c.column} >= ?")  # column names come from the schema only
            params.append(min_prob)
        if cameras:
            clauses.append(f"camera IN ({', '.join('?' * len(cameras))})")
            params.extend(int(c) for c in cameras)
        return " AND ".join(clauses), params

    def allowed_ids(self, constraints: Sequence[Constraint], cameras: Sequence[int] | None,
                    min_prob: float) -> np.ndarray | None:
        """Ids passing the filters, ``None`` when nothing filters."""
        if not constraints and not cameras:
            return None
        where, params = self._where(constraints, cameras, min_prob)
        return np.array([i for i, _ in self.index.select(where, params)], dtype=np.int64)

    # ---- queries -------------------------------------------------------------------------

    def by_attributes(self, attributes: str | Mapping[str, str] | None, k: int = 20,
                      cameras: Sequence[int] | None = None,
                      min_prob: float = DESCRIPTION_MIN_PROB) -> list[Hit]:
        """Crops by how well they match the constraints (the product of the probabilities),
        best first (ties: lower id); ``min_prob`` > 0 hides crops with a probability below
        it."""
        constraints = parse_attributes(attributes)
        k, min_prob = _check_k(k), _check_min_prob(min_prob)
        if not constraints:
            if not self.index.trained_tasks:
                raise QueryError("search by description is unavailable: the model of this "
                                 "index was trained without attribute labels (re-ID only); "
                                 "search by image")
            raise QueryError("nothing to search for: give a query crop (an image or the id of "
                             "an indexed crop) or at least one attribute, e.g. gender=female")
        where, params = self._where(constraints, cameras, min_prob)
        score = " * ".join(c.column for c in constraints)
        rows = self.index.select(where, params, order="score DESC, id", limit=k, score=score)
        entries = self.index.entries([i for i, _ in rows])
        return [Hit(e, None, _match(e, constraints)) for e in entries]

    def by_vector(self, vector: np.ndarray, k: int = 10,
                  attributes: str | Mapping[str, str] | None = None,
                  cameras: Sequence[int] | None = None, min_prob: float = IMAGE_MIN_PROB,
                  rerank: bool = False, exclude: int | None = None) -> list[Hit]:
        """Nearest crops to an embedding, optionally filtered and re-ranked."""
        constraints = parse_attributes(attributes)
        k, min_prob = _check_k(k), _check_min_prob(min_prob)
        allowed = self.allowed_ids(constraints, cameras, min_prob)  # checks trained tasks
        if allowed is not None and exclude is not None:
            allowed = allowed[allowed != exclude]
        extra = 1 if exclude is not None and allowed is None else 0
        depth = max(k, RERANK_DEPTH) if rerank else k
        dist, ids = self.index.search(np.asarray(vector)[None], depth + extra, allowed)
        pairs = [(float(d), int(i)) for d, i in zip(dist[0], ids[0]) if i >= 0 and i != exclude]
        if rerank and len(pairs) > 1:
            pairs = self._rerank(np.asarray(vector), [i for _, i in pairs])
        pairs = pairs[:k]
        entries = self.index.entries([i for _, i in pairs])
        query = self.query_person(vector)
        return [self._hit(e, d, _match(e, constraints), rerank, query)
                for (d, _), e in zip(pairs, entries)]

    def query_person(self, vector: np.ndarray) -> float | None:
        """P(person) of a query embedding (D,), None without a person check."""
        if self.calibration is None:
            return None
        p = self.calibration.person_probability(np.asarray(vector)[None])
        return None if p is None else float(p[0])

    def _hit(self, entry: Entry, distance: float, match: float | None, reranked: bool,
             query: float | None) -> Hit:
        """A hit of an image query, with P(same person) when calibrated and not re-ranked, and
        P(person) of the crop with a person check (a pair is the same person only when both
        crops pass it)."""
        if self.calibration is None:
            return Hit(entry, distance, match, reranked=reranked)
        person = self.calibration.person_probability(self.index.vector(entry.id)[None])
        mine = None if person is None else float(person[0])
        if reranked:
            return Hit(entry, distance, match, reranked=True, person=mine)
        pair = None if mine is None or query is None else (query, mine)
        v = verdict(distance, self.calibration, self.far, person=pair)
        return Hit(entry, distance, match, v.probability, v.same, person=mine)

    def _rerank(self, vector: np.ndarray, ids: list[int]) -> list[tuple[float, int]]:
        from attreid.metrics.reranking import rerank

        gallery = np.stack([self.index.vector(i) for i in ids])  # (n, D) prepared
        query = prepare_vectors(vector[None], self.index.metric)
        n = len(ids)
        k1 = max(1, min(20, n - 1))
        dist = rerank(query, gallery, k1=k1, k2=max(1, min(6, k1)), lambda_value=0.3)[0]
        order = np.argsort(dist, kind="stable")
        return [(float(dist[j]), ids[j]) for j in order]

    def embed(self, image: Any) -> np.ndarray:
        """The embedding (D,) of one image (PIL image or path)."""
        return self.embed_many([image])[0]

    def embed_many(self, images: Sequence[Any]) -> np.ndarray:
        """The embeddings (N, D) of N images (PIL images or paths), in one batched pass."""
        if self.predictor is None:
            raise QueryError("searching by image needs the index's checkpoint; open the search "
                             "with GallerySearch.open(index)")
        return self.predictor.predict(list(images)).embeddings

    def by_image(self, image: Any, k: int = 10, **options: Any) -> list[Hit]:
        """Nearest crops to a query image (PIL image or path); options as :meth:`by_vector`."""
        return self.by_vector(self.embed(image), k, **options)

    def by_id(self, image_id: int, k: int = 10, **options: Any) -> list[Hit]:
        """Nearest crops to an indexed crop, itself left out; options as :meth:`by_vector`."""
        try:
            vector = self.index.vector(int(image_id))
        except KeyError as exc:
            raise QueryError(str(exc.args[0])) from None
        return self.by_vector(vector, k, exclude=int(image_id), **options)
