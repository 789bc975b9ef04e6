"""What a person searching footage does with a page of hits: one row per person seen in one
place (consecutive frames of a track grouped), the hits along time per camera, and the hits as
CSV for a report. Pure functions of hits; the service, the CLI and the page share them."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from attreid.inference.attribute_confidence import shown_value
from attreid.search.query import Hit

TRACK_GAP_FRAMES = 50
"""Two hits of one camera at most this many frames apart (2 s at 25 frames/s) can be one track."""

CSV_COLUMNS = ("rank", "id", "path", "identity", "camera", "frame", "score", "distance",
               "p_same", "same", "person", "match", "attributes")


@dataclass
class Group:
    """Hits taken as one person seen in one place: ``best`` (the highest ranked) and the other
    ``members`` in rank order."""

    best: Hit
    members: list[Hit] = field(default_factory=list)

    @property
    def size(self) -> int:
        return 1 + len(self.members)


def group_tracks(hits: Sequence[Hit], vector: Callable[[int], np.ndarray], distance: float,
                 gap: int = TRACK_GAP_FRAMES) -> list[Group]:
    """Group hits of one track, so that one person standing in front of one camera fills one
    row, not twenty: crops cut from footage (``attreid ingest``) by their stored track (same
    camera, source and track id); other crops when of the same camera, frames at most ``gap``
    apart (chained) and embeddings at most ``distance`` apart (Euclidean on the index's
    vectors). Hits without camera or frame stay alone. Groups keep the order of their best
    hit.

    Args:
        vector: the index's vector (D,) of an id.
        distance: the largest embedding distance within a track (e.g. the calibration's
            threshold at FAR 1e-3).
    """
    groups: list[Group] = []
    for hit in hits:
        e = hit.entry
        home = None
        if e.camera is not None and e.frame is not None:
            home = next((g for g in groups if _joins(g, hit, vector, distance, gap)), None)
        if home is None:
            groups.append(Group(hit))
        else:
            home.members.append(hit)
    return groups


def _joins(group: Group, hit: Hit, vector: Callable[[int], np.ndarray], distance: float,
           gap: int) -> bool:
    e = hit.entry
    for member in (group.best, *group.members):
        m = member.entry
        if e.track is not None and m.track is not None:  # cut from footage: the tracker's word
            if (m.camera_name, m.source, m.track) == (e.camera_name, e.source, e.track):
                return True
            continue
        if m.camera != e.camera or m.frame is None or abs(m.frame - e.frame) > gap:
            continue
        if float(np.linalg.norm(vector(m.id) - vector(e.id))) <= distance:
            return True
    return False


def tracks_json(tracks: Sequence[Group],
                as_json: Callable[[Sequence[Hit]], list[dict[str, Any]]]
                ) -> list[dict[str, Any]]:
    """One JSON row per track: its best hit, with ``group`` = its size and the other
    members; ``as_json`` turns hits into dicts (the CLI's :meth:`Hit.as_dict`, the
    service's with image URLs)."""
    return [dict(as_json([g.best])[0], group={"size": g.size, "members": as_json(g.members)})
            for g in tracks]


def by_time(hits: Sequence[Hit]) -> list[Hit]:
    """Hits in time order: crops with a wall-clock time (cut from footage) first, one
    chronology across cameras; then crops without one by camera and frame (a file name's frame
    numbers are counted per camera, not comparable across cameras); hits without a camera or
    frame last, in rank order. (The whole gallery's sightings: :mod:`attreid.search.timeline`.)"""
    def key(item: tuple[int, Hit]) -> tuple:
        rank, h = item
        e = h.entry
        if e.time is not None:
            return (0, e.time, 0, 0, rank)
        missing = e.camera is None or e.frame is None
        return (2 if missing else 1, 0.0, e.camera or 0, e.frame or 0, rank)

    return [h for _, h in sorted(enumerate(hits), key=key)]


def hits_csv(hits: Sequence[Hit], first_rank: int = 1,
             confidence: Mapping[str, Any] | None = None) -> str:
    """The hits as CSV (header :data:`CSV_COLUMNS`; ``attributes`` as ``task=value`` pairs,
    an uncertain value by ``confidence`` as ``task=value?``)."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for rank, hit in enumerate(hits, start=first_rank):
        writer.writerow(_row(rank, hit.as_dict(confidence), hit.entry.path))
    return out.getvalue()


def _row(rank: int, h: dict[str, Any], path: str) -> list[Any]:
    attrs = " ".join(f"{t}={shown_value(a['value'], a)}" for t, a in h["attributes"].items())
    return [rank, h["id"], path, _blank(h["identity"]), _blank(h["camera"]), _blank(h["frame"]),
            _blank(h["score"]), _blank(h["distance"]), _blank(h["probability"]),
            _blank(h["same"]), _blank(h["person"]), _blank(h["match"]), attrs]


def _blank(value: Any) -> Any:
    return "" if value is None else value
