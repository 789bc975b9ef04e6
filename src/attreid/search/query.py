"""Queries on a gallery (:mod:`attreid.search.gallery`: an index folder or Milvus): by image,
by attributes, both, by camera, re-ranked.

Attribute constraints are ``task=value`` pairs with the class names of
:data:`attreid.schema.TASKS` (``gender=female``, ``backpack=yes``, ``upcolor=red``). How well a
crop matches is the product of its predicted probabilities of those values (``match``).

Attribute-only queries rank every crop by ``match`` (:data:`DESCRIPTION_MIN_PROB` = 0: nothing
hidden). Measured on Market-1501 (docs/RESULTS.md, part 5) the product ranks best among the
product, the min, the mean and a calibrated product; a cut at 0.5 (``min_prob=0.5``) costs 8-11
mAP points by hiding crops of the person whose predicted probability fell below it. With a
calibration that has a person check, ``match`` is multiplied by the crop's P(person):
background and partial crops, confident-looking for rare values, sink (+3 to +8 mAP points).

Image and attributes together: by default the constraints *re-weight* the image's nearest
crops (weight of the distance x ``match``, nothing hidden: adding a value the person truly has
cannot remove him when the model is unsure of it); with ``hard=True`` they *filter* (a crop
passes when each probability is at least ``min_prob``, :data:`IMAGE_MIN_PROB` = 0.5 by default)
and the image ranks what is left by distance. :meth:`GallerySearch.count` says how many crops a
filter hid.

Only the tasks the index's model was trained on (:attr:`GalleryIndex.trained_tasks`) can be
searched by (another is a :class:`QueryError` naming it); a re-ID-only model: by image only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from attreid.inference.calibration import (
    DEFAULT_FAR,
    DEFAULT_FPIR,
    DEFAULT_MATCHES,
    Calibration,
    SearchPoint,
    find_calibration,
)
from attreid.inference.verdicts import gallery_drift, search_verdict
from attreid.search.constraints import (
    Constraint,
    QueryError,
    check_k,
    check_min_prob,
    check_offset,
    parse_attributes,
    pool_vectors,
)
from attreid.search.hits import Hit, Hits, match_of
from attreid.search.columns import ColumnStore
from attreid.search.filters import RowFilter
from attreid.search.engines import open_location
from attreid.search.gallery import Gallery
from attreid.search.index import GalleryIndexError, unreached
from attreid.search.metadata import Entry
from attreid.search.vectors import prepare_vectors
from attreid.zoo import recorded_checkpoint, resolve_checkpoint

DESCRIPTION_MIN_PROB = 0.0
"""Default ``min_prob`` of attribute-only queries: rank every crop, hide none."""
IMAGE_MIN_PROB = 0.5
"""Default ``min_prob`` of constraints added to an image query: they filter."""

PERSON_BLOCK = 65536
"""Vectors scored at once by :meth:`GallerySearch.person_scores` (128 MiB at 512-d)."""

ROCCHIO_RIGHT, ROCCHIO_WRONG = 0.75, 0.15
"""Weights of the crops marked right and wrong in :meth:`GallerySearch.refine`."""

MATCH_FLOOR = 1e-6
"""Smallest ``match`` a soft constraint counts (log of 0 would rank a crop below all)."""

SOFT_DEPTH = 200
"""Nearest crops an image query with soft attribute constraints ranks (see ``by_vector``)."""

DRIFT_MIN_CROPS = 20  # crops a gallery needs for its drift check (190 distinct pairs)

RERANK_DEPTH = 100
"""Candidates re-ranked by k-reciprocal re-ranking (the first ``max(k, RERANK_DEPTH)``)."""


class GallerySearch:
    """Search an index by image, by attributes or both.

    Example::

        search = GallerySearch.open("runs/index")
        hits = search.by_image("query.jpg", k=10, attributes="gender=female")
        hits[0].entry.path, hits[0].distance
    """

    def __init__(self, index: Gallery, predictor: Any | None = None,
                 choice: Any | None = None, calibration: Calibration | None = None,
                 calibration_note: str = "uncalibrated", far: float = DEFAULT_FAR,
                 fpir: float = DEFAULT_FPIR, matches: float = DEFAULT_MATCHES) -> None:
        if calibration is not None:
            calibration.threshold(far)  # a stored operating point, or a CalibrationError
            calibration.search_point(max(len(index), 1), fpir, matches)  # or its error
        self.index = index
        self.predictor = predictor
        self.choice = choice  # the backend's Choice (attreid.inference.backends), when opened
        self.calibration, self.calibration_note, self.far = calibration, calibration_note, far
        self.fpir, self.matches = fpir, matches
        self._person: np.ndarray | None = None  # P(person) of every crop, when computed
        self._drift: list[str] | None = None
        self._point: tuple[int, SearchPoint] | None = None  # (gallery size, its point)
        # description search from columns in memory (attreid.search.columns): where the
        # engine's own query would stream every row through the client
        self.columns = None if index.scans_by_query else ColumnStore(index)

    def hold_columns(self) -> None:
        """Answer descriptions from columns held in memory (:mod:`attreid.search.columns`),
        for a process that answers many queries (``attreid serve``)."""
        if self.columns is None:
            self.columns = ColumnStore(self.index)

    @property
    def point(self) -> SearchPoint | None:
        """Where hits are marked (:meth:`Calibration.search_point` of this size); None: none."""
        size = max(len(self.index), 1)
        if self.calibration is not None and (self._point is None or self._point[0] != size):
            self._point = (size, self.calibration.search_point(size, self.fpir, self.matches))
        return None if self._point is None else self._point[1]

    def calibration_status(self) -> dict[str, Any]:
        """Whether hits carry P(same person), the operating point they are marked at (a
        search's: ``fpir`` strangers per query in this gallery, ``rule`` linking the mark and
        P(same)), ``far`` for comparing two crops (POST /verify), and ``drift``: lines saying
        where this gallery looks unlike the calibration's data."""
        c, point = self.calibration, self.point
        if c is None or point is None:
            return {"calibrated": False, "note": self.calibration_note}
        return {"calibrated": True, "method": c.method, "far": self.far,
                "fpir": point.fpir, "gallery_size": point.gallery_size,
                "pair_far": point.far, "threshold": point.threshold,
                "prior": point.prior, "p_cut": point.p_cut, "rule": point.rule(),
                "unsupported": point.unsupported, "eer": c.eer["rate"],
                "person_check": c.person is not None,
                "person_threshold": c.person_threshold if c.person else None,
                "data": Path(str(c.data.get("data", ""))).name, "drift": self.drift()}

    def drift(self, sample: int = 2000, seed: int = 0) -> list[str]:
        """:func:`~attreid.inference.verdicts.gallery_drift` (once) of ``sample`` random pairs'
        distances (mostly strangers in a large gallery) and P(person); [] when uncalibrated."""
        n, c = len(self.index), self.calibration
        if self._drift is None and c is not None and n < DRIFT_MIN_CROPS:
            self._drift = [f"drift not checked: {n} crop(s), fewer than {DRIFT_MIN_CROPS}; the "
                           "calibration may not hold for crops of another camera network"]
        elif self._drift is None and c is not None:
            from attreid.metrics.distance import pairwise_distance

            pairs = np.random.default_rng(seed).integers(0, n, (2, sample))
            a, b = pairs[:, pairs[0] != pairs[1]]
            both = self.index.vectors_of(np.concatenate([a, b]))  # one batched read
            x, y = both[:len(a)], both[len(a):]
            d = np.concatenate([np.diagonal(pairwise_distance(
                x[i:i + 500], y[i:i + 500], self.index.metric).double().numpy())
                for i in range(0, len(x), 500)])
            self._drift = gallery_drift(c, d, c.person_probability(x))
        return self._drift or []

    @classmethod
    def open(cls, index: Path | str, checkpoint: Path | str | None = None,
             device: str | None = None, backend: str = "auto",
             calibration: Path | str | None = None, far: float = DEFAULT_FAR,
             model: bool = True, fpir: float = DEFAULT_FPIR) -> "GallerySearch":
        """Open an index and the checkpoint that made it (``checkpoint`` overrides the recorded
        path; its sha256 must match; an ONNX export runs with ONNX Runtime). ``backend``: how
        query crops are embedded (:mod:`attreid.inference.backends`). ``calibration``: distance
        to P(same) (default: the one beside the checkpoint, when made for it, the index's flip
        and distance); ``fpir``: strangers marked per query (:meth:`Calibration.search_point`);
        ``far``: the one-to-one operating point (:meth:`verify_pair`). ``model=False``: the
        index alone, without importing torch (descriptions and indexed crops need no model).

        Raises:
            GalleryIndexError: the index is missing/corrupt or the checkpoint does not match.
            CalibrationError: an explicit calibration file that is missing or does not apply.
        """
        opened = open_location(str(index))
        path = resolve_checkpoint(checkpoint) if checkpoint else recorded_checkpoint(
            opened.info["checkpoint"], opened.info.get("checkpoint_sha256", ""))
        flip, metric = bool(opened.info.get("flip")), opened.metric
        if not model:
            found, note = find_calibration(path, opened.info["checkpoint_sha256"], flip, metric,
                                           calibration)
            return cls(opened, None, None, found, note, far, fpir)
        if not path.is_file():
            raise GalleryIndexError(f"{path}: the checkpoint of index {opened.location} is not "
                                    "there; pass the checkpoint (--checkpoint) that made it")
        from attreid.inference.backends import load_predictor  # torch: only with a model
        from attreid.inference.onnx import ExportError
        from attreid.utils.checkpoint import CheckpointError

        try:
            predictor, choice = load_predictor(path, backend, device=device,
                                               flip=bool(opened.info.get("flip")))
        except (CheckpointError, ExportError) as exc:
            raise GalleryIndexError(str(exc)) from exc
        opened.check_checkpoint(path, predictor.checkpoint_sha256)
        found, note = find_calibration(path, predictor.checkpoint_sha256, flip, metric,
                                       calibration)
        return cls(opened, predictor, choice, found, note, far, fpir)

    def reopened(self, index: Gallery) -> "GallerySearch":
        """This search over ``index``, a newer generation of its folder (crops added, or the
        folder rebuilt with the same checkpoint): the same model, backend, calibration and
        operating point; nothing computed from the old rows is kept (P(person) of the crops is
        computed afresh).

        Raises:
            GalleryIndexError: ``index`` was made by another checkpoint, or with another flip,
                metric, dimension or trained tasks (the model and calibration held do not
                apply to it); open a new search (restart the service) on it.
        """
        keys = ("checkpoint_sha256", "flip", "metric", "dim")
        changed = [k for k in keys if self.index.info.get(k) != index.info.get(k)]
        if index.trained_tasks != self.index.trained_tasks:
            changed.append("trained_tasks")
        if changed:
            raise GalleryIndexError(
                f"{index.location}: the index was rebuilt with another {', '.join(changed)} than "
                "the one this search opened; open it anew (restart `attreid serve`)")
        fresh = GallerySearch(index, self.predictor, self.choice, self.calibration,
                              self.calibration_note, self.far, self.fpir, self.matches)
        if self.columns is not None:
            fresh.hold_columns()
        return fresh

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

    def check_frames(self, frames: tuple[int, int] | None) -> None:
        """Raise :class:`QueryError` for a frame range that is empty or holds no crop of the
        index (naming the frames it has), or on an index whose file names gave no frame
        numbers."""
        if frames is None:
            return
        low, high = frames
        if low > high or low < 0:
            raise QueryError(f"frames {low}-{high}: expected FIRST-LAST with 0 <= FIRST <= LAST")
        held = self.index.frame_range()
        if held is None:
            raise QueryError("frames: this index has no frame numbers (its file names carry "
                             "none), so it cannot be filtered by frame")
        if not self.index.count(RowFilter(below=len(self.index), frames=(low, high))):
            raise QueryError(f"frames {low}-{high}: no crop of this index is in that range; its "
                             f"frames run from {held[0]} to {held[1]}")

    def _where(self, constraints: Sequence[Constraint], cameras: Sequence[int] | None,
               min_prob: float, frames: tuple[int, int] | None = None) -> RowFilter:
        self.check_trained(constraints)
        self.check_cameras(cameras)
        self.check_frames(frames)
        # only rows of the vectors held: rows another process added since (a newer
        # generation, see reopened) are not seen, so a query never mixes two generations
        minimums = tuple((c.column, min_prob) for c in constraints) if min_prob > 0 else ()
        return RowFilter(below=len(self.index), cameras=tuple(int(c) for c in cameras or ()),
                         frames=None if frames is None else (int(frames[0]), int(frames[1])),
                         minimums=minimums)

    def count(self, attributes: str | Mapping[str, str] | None = None,
              cameras: Sequence[int] | None = None, min_prob: float = 0.0,
              frames: tuple[int, int] | None = None) -> tuple[int, int]:
        """(crops passing the filters, crops of the cameras and frames that ``min_prob``
        hides): the total behind a page of results, and what a hard filter took away."""
        constraints = parse_attributes(attributes)
        rows = self.columns or self.index
        passing = rows.count(self._where(constraints, cameras, check_min_prob(min_prob), frames))
        if not constraints or min_prob <= 0:
            return passing, 0
        return passing, rows.count(self._where([], cameras, 0.0, frames)) - passing

    # ---- queries -------------------------------------------------------------------------

    def by_attributes(self, attributes: str | Mapping[str, str] | None, k: int = 20,
                      cameras: Sequence[int] | None = None,
                      min_prob: float = DESCRIPTION_MIN_PROB,
                      frames: tuple[int, int] | None = None, offset: int = 0) -> list[Hit]:
        """Crops by how well they match the constraints, best first (ties: lower id), from
        rank ``offset`` on (paging); ``min_prob`` > 0 hides crops with a probability below it;
        ``frames`` keeps crops of that frame range. A hit's ``match`` is its sort key: the
        product of the probabilities of the values asked for, times the crop's P(person) with
        a person check (the probability that it is a person who looks so; junk sinks)."""
        constraints = parse_attributes(attributes)
        k, min_prob = check_k(k), check_min_prob(min_prob)
        if not constraints:
            if not self.index.trained_tasks:
                raise QueryError("search by description is unavailable: the model of this "
                                 "index was trained without attribute labels (re-ID only); "
                                 "search by image")
            raise QueryError("nothing to search for: give a query crop (an image or the id of "
                             "an indexed crop) or at least one attribute, e.g. gender=female")
        where = self._where(constraints, cameras, min_prob, frames)
        columns = [c.column for c in constraints]
        person = self.person_scores()
        rows = self.columns or self.index
        if person is None:
            ids = rows.products(where, columns, k, check_offset(offset))[0].tolist()
        else:  # down-rank junk: match x P(person) over every crop passing the filters
            ids_all, match = rows.products(where, columns)
            order = np.lexsort((ids_all, -(match * person[ids_all])))
            ids = ids_all[order][check_offset(offset):offset + k].tolist()
        entries = self.index.entries(ids)
        if person is None:
            return [Hit(e, None, match_of(e, constraints)) for e in entries]
        return [Hit(e, None, match_of(e, constraints) * float(person[e.id]),
                    person=float(person[e.id])) for e in entries]

    def person_scores(self) -> np.ndarray | None:
        """P(person) of every indexed crop (N,) by the calibration's person check, computed
        once (in blocks of :data:`PERSON_BLOCK` vectors); None without a check."""
        if self.calibration is None or self.calibration.person is None:
            return None
        if self._person is None or len(self._person) != len(self.index):
            n, parts = len(self.index), []
            for start in range(0, n, PERSON_BLOCK):
                block = self.index.vector_block(start, min(PERSON_BLOCK, n - start))
                parts.append(self.calibration.person_probability(block))
            self._person = np.concatenate(parts) if parts else np.zeros(0)
        return self._person

    def by_vector(self, vector: np.ndarray, k: int = 10,
                  attributes: str | Mapping[str, str] | None = None,
                  cameras: Sequence[int] | None = None, min_prob: float = IMAGE_MIN_PROB,
                  rerank: bool = False, exclude: int | None = None, hard: bool = False,
                  frames: tuple[int, int] | None = None, offset: int = 0) -> list[Hit]:
        """Nearest crops to an embedding from rank ``offset`` on, optionally filtered and
        re-ranked. Attribute constraints re-weight (soft, the default): the first
        :data:`SOFT_DEPTH` nearest crops are ranked by evidence(distance) + log(``match``),
        evidence = the calibration's log-odds of the same person (Platt: linear in the
        distance, so a constraint the model gives 5 % costs a crop about as much as 3 distance
        units on Market-1501), else -(d - d1) / s (d1 the nearest distance, s the median
        candidate's distance minus d1). Odds multiply, probabilities near 1 would not: with
        P(same) as the weight, every crop closer than the threshold weighed ~1 and the
        attribute alone decided. Nothing is hidden. ``hard=True``: they filter at ``min_prob``
        instead."""
        constraints = parse_attributes(attributes)
        k, min_prob, offset = check_k(k), check_min_prob(min_prob), check_offset(offset)
        soft = bool(constraints) and not hard
        where = self._where(constraints, cameras, 0.0 if soft else min_prob, frames)
        extra = 1 if exclude is not None else 0
        want = k + offset
        depth = max(want, RERANK_DEPTH) if rerank else max(want, SOFT_DEPTH) if soft else want
        found = self.index.find(np.asarray(vector)[None], depth + extra, where)
        dist, ids = found.distances, found.ids
        short = unreached(ids)  # a filtered search comes back whole, or says so here
        pairs = [(float(d), int(i)) for d, i in zip(dist[0], ids[0]) if i >= 0 and i != exclude]
        if rerank and len(pairs) > 1:
            pairs = self._rerank(np.asarray(vector), [i for _, i in pairs])
        entries = self.index.entries([i for _, i in pairs])
        matches = [match_of(e, constraints) for e in entries]
        order = list(range(len(pairs)))
        if soft:  # re-ranked distances are on another scale: their relative weight
            order = self._soft_order([d for d, _ in pairs], matches, calibrated=not rerank)
        query, shown = self.query_person(vector), order[offset:want]
        persons = self._persons([entries[j].id for j in shown])
        hits = Hits(self._hit(entries[j], pairs[j][0], matches[j], rerank, query, person)
                    for j, person in zip(shown, persons))
        hits.unreached, hits.allowed = short, (found.allowed if where.filters else None)
        return hits

    def _soft_order(self, distances: list[float], matches: list[float | None],
                    calibrated: bool = True) -> list[int]:
        """Candidates ranked by log-odds(distance) + log(match) (see :meth:`by_vector`)."""
        d = np.asarray(distances, dtype=np.float64)
        if not len(d):
            return []
        if self.calibration is not None and calibrated:
            evidence = self.calibration.log_odds(d)
        else:
            spread = max(float(np.median(d) - d.min()), 1e-12)
            evidence = -(d - d.min()) / spread
        m = np.asarray([1.0 if x is None else x for x in matches], dtype=np.float64)
        score = evidence + np.log(np.clip(m, MATCH_FLOOR, 1.0))
        return sorted(range(len(d)), key=lambda j: (-score[j], d[j]))

    def refine(self, vector: np.ndarray, right: Sequence[int] = (),
               wrong: Sequence[int] = ()) -> np.ndarray:
        """The query moved toward the indexed crops marked right and away from those marked
        wrong (Rocchio, Salton 1971: q + 0.75 mean(right) - 0.15 mean(wrong), over 1.6 so that
        a query refined by its own neighbours keeps its scale; cosine indexes renormalise).

        Raises:
            QueryError: an id not in the index.
        """
        q = np.asarray(vector, dtype=np.float32)
        total, weight = q.copy(), 1.0
        for ids, w in ((right, ROCCHIO_RIGHT), (wrong, -ROCCHIO_WRONG)):
            if len(ids):
                total += w * self._vectors(ids).mean(axis=0)
                weight += w
        return total / weight if weight > 0 else total

    def _vectors(self, ids: Sequence[int]) -> np.ndarray:
        try:
            return self.index.vectors_of([int(i) for i in ids])
        except KeyError as exc:
            raise QueryError(str(exc.args[0])) from None

    def _persons(self, ids: Sequence[int]) -> list[float | None]:
        """P(person) of indexed crops by the person check (one batched read of their
        vectors), None each without a calibration or check."""
        if self.calibration is None or self.calibration.person is None or not len(ids):
            return [None] * len(ids)
        p = self.calibration.person_probability(self.index.vectors_of(ids))
        return [None] * len(ids) if p is None else [float(x) for x in p]

    def query_person(self, vector: np.ndarray) -> float | None:
        """P(person) of a query embedding (D,), None without a person check."""
        if self.calibration is None:
            return None
        p = self.calibration.person_probability(np.asarray(vector)[None])
        return None if p is None else float(p[0])

    def _hit(self, entry: Entry, distance: float, match: float | None, reranked: bool,
             query: float | None, mine: float | None) -> Hit:
        """A hit of an image query, with P(same person) when calibrated and not re-ranked, and
        P(person) of the crop with a person check (a pair is the same person only when both
        crops pass it)."""
        if self.calibration is None:
            return Hit(entry, distance, match, reranked=reranked)
        if reranked:
            return Hit(entry, distance, match, reranked=True, person=mine)
        pair = None if mine is None or query is None else (query, mine)
        point = self.point
        assert point is not None
        v = search_verdict(distance, self.calibration, point, person=pair)
        return Hit(entry, distance, match, v.probability, v.same, person=mine, note=v.note)

    def _rerank(self, vector: np.ndarray, ids: list[int]) -> list[tuple[float, int]]:
        from attreid.metrics.reranking import rerank

        gallery = self.index.vectors_of(ids)  # (n, D) prepared
        query = prepare_vectors(vector[None], self.index.metric)
        n = len(ids)
        k1 = max(1, min(20, n - 1))
        dist = rerank(query, gallery, k1=k1, k2=max(1, min(6, k1)), lambda_value=0.3)[0]
        order = np.argsort(dist, kind="stable")
        return [(float(dist[j]), ids[j]) for j in order]

    def embed(self, image: Any, channels: str | None = None) -> np.ndarray:
        """The embedding (D,) of one image (PIL image, path, or array with ``channels``)."""
        return self.embed_many([image], channels)[0]

    def embed_many(self, images: Sequence[Any], channels: str | None = None) -> np.ndarray:
        """The embeddings (N, D) of N images in one batched pass (``channels``: ``"bgr"`` for
        OpenCV arrays, ``"rgb"`` for RGB arrays; see :meth:`attreid.Predictor.predict`)."""
        if self.predictor is None:
            raise QueryError("searching by image needs the index's checkpoint; open the search "
                             "with GallerySearch.open(index)")
        return self.predictor.predict(list(images), channels=channels).embeddings

    def by_image(self, image: Any, k: int = 10, channels: str | None = None,
                 **options: Any) -> list[Hit]:
        """Nearest crops to a query image (as :meth:`embed`); options as :meth:`by_vector`."""
        return self.by_vector(self.embed(image, channels), k, **options)

    def by_images(self, images: Sequence[Any], k: int = 10, channels: str | None = None,
                  **options: Any) -> list[Hit]:
        """Nearest crops to several crops of one person: the mean of their embeddings (one
        forward pass); options as :meth:`by_vector`."""
        return self.by_vector(pool_vectors(self.embed_many(images, channels)), k, **options)

    def by_id(self, image_id: int, k: int = 10, **options: Any) -> list[Hit]:
        """Nearest crops to an indexed crop, itself left out; options as :meth:`by_vector`."""
        vector = self._vectors([int(image_id)])[0]
        return self.by_vector(vector, k, exclude=int(image_id), **options)
