"""What a search returns: a :class:`Hit` per crop (with its distance, attribute match,
P(same person) and decision) and :class:`Hits`, the list of an image query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from attreid.inference.attribute_confidence import judge_attributes
from attreid.schema import TASKS
from attreid.search.constraints import Constraint
from attreid.search.metadata import Entry
from attreid.search.sightings import iso_time

_TASKS = {t.name: t for t in TASKS}


@dataclass(frozen=True)
class Hit:
    """One result: the crop, its distance to the query image (``None`` for attribute-only
    queries; after re-ranking, ``reranked`` and a re-ranked distance on another scale), how
    well it matches the attribute constraints (``None`` without any), and with a calibration
    the probability that it shows the query's person (under the search's prior) and whether
    that passes the search's operating point (``None`` when uncalibrated, re-ranked or not an
    image query; :attr:`GallerySearch.point`); ``person``: P(person) of the crop when the
    calibration has a person check; ``note``: why a hit within the threshold is not marked
    (the query or the crop fails the person check), else ""."""

    entry: Entry
    distance: float | None
    match: float | None
    probability: float | None = None
    same: bool | None = None
    reranked: bool = False
    person: float | None = None  # P(person) of the crop, with a calibration's person check
    note: str = ""  # why a hit near enough is not marked (a crop fails the person check)

    def as_dict(self, confidence: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The hit as JSON-ready values; ``name`` is :attr:`Entry.display_name` (valid UTF-8:
        the bytes of a file name that are not UTF-8 as ``\\xNN``, which no JSON encoder
        writing UTF-8 would take as they are). ``score`` names what ``distance`` is:
        ``"distance"``, ``"re-ranked distance"`` or ``None``. Each attribute carries ``sure``
        and ``reliable`` by ``confidence`` (a calibration's ``attributes``; None: unknown,
        :func:`~attreid.inference.attribute_confidence.judge_attributes`)."""
        e = self.entry
        score = None if self.distance is None else (
            "re-ranked distance" if self.reranked else "distance")
        return {"id": e.id, "name": e.display_name, "distance": self.distance, "score": score,
                "match": self.match, "probability": self.probability, "same": self.same,
                "person": self.person, "note": self.note,
                "camera": e.camera, "frame": e.frame, "identity": e.identity,
                **({} if e.time is None else {"time": iso_time(e.time), "track": e.track,
                                               "camera_name": e.camera_name}),
                "attributes": judge_attributes(e.attributes(), confidence)}


class Hits(list):
    """The :class:`Hit` s of an image query, best first (a plain list otherwise), and
    ``unreached``: candidate slots the index could not fill although that many crops pass the
    filters (0 unless an allowed crop is out of every IVF list; a short IVF search is repeated
    with more lists first, see :meth:`GalleryIndex.search`), and ``allowed``: crops the
    query's filters let through (cameras, frames, a hard attribute filter; None: no filter)."""

    unreached: int = 0
    allowed: int | None = None


def match_of(entry: Entry, constraints: Sequence[Constraint]) -> float | None:
    if not constraints:
        return None
    probs = [entry.probabilities[c.task][_TASKS[c.task].classes.index(c.value)]
             for c in constraints]
    return float(np.prod(probs))


def confidence_of(calibration: Any) -> Mapping[str, Any] | None:
    """The attribute confidence of a :class:`~attreid.inference.calibration.Calibration`
    (None without a calibration or one fitted without attribute labels)."""
    return None if calibration is None else calibration.attributes
