"""Where was this person, when, in order: the sightings of a person across cameras as one
chronology.

A *visit* is one person seen in one place: the crops of one track (crops cut from footage, by
their stored track) or a single crop. :func:`visits` orders visits by wall-clock time (crops
cut from footage carry one, :mod:`attreid.search.sightings`), crops without a time after them
by camera and frame (Market-1501's file names give both, no clock). :func:`where_else` asks the
whole gallery, not a page of results: every crop the calibrated operating point marks as the
query's person (or every crop within a distance), however deep in the ranking, as visits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from attreid.search.constraints import QueryError
from attreid.search.hits import Hit
from attreid.search.sightings import iso_time

WHERE_ELSE_DEPTH = 2000
"""How deep :func:`where_else` looks by default: the nearest 2,000 crops (a person seen by many
cameras for minutes leaves hundreds of crops; deeper ones are strangers at any sane threshold)."""


@dataclass
class Visit:
    """One person in one place: ``hits`` in rank order (``hits[0]`` the best), their camera
    (the ingest's camera name, else the camera number as text, else ``"?"``), first and last
    time (seconds since the epoch, UTC; None without a clock) and frame."""

    camera: str
    hits: list[Hit] = field(default_factory=list)

    @property
    def best(self) -> Hit:
        return self.hits[0]

    def _times(self) -> list[float]:
        return [h.entry.time for h in self.hits if h.entry.time is not None]

    def _frames(self) -> list[int]:
        return [h.entry.frame for h in self.hits if h.entry.frame is not None]

    @property
    def start(self) -> float | None:
        times = self._times()
        return min(times) if times else None

    @property
    def end(self) -> float | None:
        times = self._times()
        return max(times) if times else None

    def key(self) -> tuple:
        """Sort key: timed visits by start, then untimed ones by camera and first frame."""
        frames = self._frames()
        first = min(frames) if frames else -1
        if self.start is not None:
            return (0, self.start, self.camera, first)
        return (1, 0.0, self.camera, first)

    def as_dict(self, hit_json: Callable[[Sequence[Hit]], list[dict[str, Any]]]
                ) -> dict[str, Any]:
        """JSON: camera, start/end (ISO 8601 UTC and seconds), first/last frame, the crops
        (``hit_json`` of the hits, in time order) and ``best`` (the highest ranked one's id)."""
        frames = self._frames()
        ordered = sorted(self.hits, key=lambda h: (h.entry.time or 0.0, h.entry.frame or 0))
        return {"camera": self.camera, "start": _iso(self.start), "end": _iso(self.end),
                "start_s": self.start, "end_s": self.end,
                "first_frame": min(frames) if frames else None,
                "last_frame": max(frames) if frames else None,
                "best": self.best.entry.id, "crops": hit_json(ordered)}


def _iso(seconds: float | None) -> str | None:
    return None if seconds is None else iso_time(seconds)


def camera_of(hit: Hit) -> str:
    """The camera a hit is shown under: the ingest's name, else the number, else ``"?"``."""
    e = hit.entry
    if e.camera_name is not None:
        return e.camera_name
    return "?" if e.camera is None else str(e.camera)


def _track_key(hit: Hit) -> tuple | None:
    e = hit.entry
    if e.track is None:
        return None
    return (e.camera_name, e.source, e.track)


def visits(hits: Sequence[Hit]) -> list[Visit]:
    """The hits as visits in time order (see the module docstring). Crops of one stored track
    form one visit; every other crop is a visit of its own."""
    tracks: dict[tuple, Visit] = {}
    out: list[Visit] = []
    for hit in hits:
        key = _track_key(hit)
        if key is not None and key in tracks:
            tracks[key].hits.append(hit)
            continue
        visit = Visit(camera_of(hit), [hit])
        out.append(visit)
        if key is not None:
            tracks[key] = visit
    return sorted(out, key=Visit.key)


def lanes(ordered: Sequence[Visit]) -> list[str]:
    """The cameras of ``ordered`` visits, each once, in the order they are first seen."""
    return list(dict.fromkeys(v.camera for v in ordered))


def counting_rule(search: Any, max_distance: float | None) -> str | None:
    """What :func:`where_else` counted as the person, in words: ``distance <= D``, or the
    calibrated operating point's rule (None when uncalibrated)."""
    if max_distance is not None:
        return f"distance <= {max_distance:g}"
    return search.calibration_status().get("rule")


def where_else(search: Any, vector: Any, exclude: int | None = None,
               depth: int = WHERE_ELSE_DEPTH, max_distance: float | None = None
               ) -> tuple[list[Visit], int]:
    """Every crop among the ``depth`` nearest that is the query's person, as visits in time
    order, and how many crops were looked at.

    A crop counts when the calibrated search marks it the same person (``Hit.same``: the
    operating point of :attr:`GallerySearch.point`), or, with ``max_distance``, when it is at
    most that far (for an uncalibrated index, or to look wider than the operating point). The
    other crops of an indexed query's own track always count: the tracker followed the person
    between them, whatever the embeddings say.

    Args:
        search: a :class:`~attreid.search.query.GallerySearch`.
        vector: the query embedding (D,).
        exclude: an indexed query crop's id, left out.

    Raises:
        QueryError: neither a calibration nor ``max_distance`` (nothing says who is the same
            person), or ``depth`` < 1.
    """
    if depth < 1:
        raise QueryError(f"depth {depth}: at least 1 crop")
    if max_distance is None and search.calibration is None:
        raise QueryError("where else needs a calibration (attreid calibrate) to say which crops "
                         "are the same person, or a largest distance (max_distance)")
    hits = search.by_vector(vector, min(depth, max(len(search.index), 1)), exclude=exclude)
    own = set(search.index.track(exclude)) if exclude is not None else set()
    if max_distance is not None:
        kept = [h for h in hits if h.entry.id in own or (
            h.distance is not None and h.distance <= max_distance)]
    else:
        kept = [h for h in hits if h.same or h.entry.id in own]
    return visits(kept), len(hits)
