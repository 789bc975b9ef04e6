"""Where and when an indexed crop was seen, for crops cut from footage (``attreid ingest``).

An index made from footage holds, besides its ``images`` rows, a table ``sightings`` with one
row per crop (the same ``id``): the camera's name, the source (video file or frame folder), the
wall-clock time (seconds since the Unix epoch, UTC), the track id within the source, the box in
frame pixels (xyxy), the detector's score, the crop's quality (see
:func:`attreid.footage.tracklets.crop_quality`) and the file of a reduced full frame for
context. A table ``ingested`` records each source whose crops were committed (key: the source's
identity, value: JSON summary), so a rerun skips it. Both tables are written in the transaction
that adds the crops' rows (:meth:`attreid.search.index.GalleryIndex.append_arrays`), so a crash
leaves all of a source or none of it. Indexes of crop folders have neither table.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Sequence

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sightings (id INTEGER PRIMARY KEY, camera_name TEXT NOT NULL, "
    "source TEXT NOT NULL, time REAL NOT NULL, track INTEGER NOT NULL, x1 REAL NOT NULL, "
    "y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL, score REAL NOT NULL, "
    "quality REAL NOT NULL, frame_image TEXT)",
    "CREATE INDEX IF NOT EXISTS sightings_time ON sightings (time)",
    "CREATE TABLE IF NOT EXISTS ingested (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


@dataclass(frozen=True)
class Sighting:
    """One crop's footage fields (see the module docstring); ``box`` is (x1, y1, x2, y2)."""

    camera_name: str
    source: str
    time: float
    track: int
    box: tuple[float, float, float, float]
    score: float
    quality: float
    frame_image: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"camera_name": self.camera_name, "source": self.source, "time": self.time,
                "track": self.track, "box": [round(v, 2) for v in self.box],
                "score": round(self.score, 4), "quality": round(self.quality, 4),
                "frame_image": self.frame_image}


def iso_time(seconds: float) -> str:
    """ISO 8601 UTC with milliseconds of a sighting's time, e.g. ``2026-12-01T09:30:00.400Z``."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def create_tables(db: sqlite3.Connection) -> None:
    """Create the two tables where missing (inside the caller's transaction)."""
    for statement in _SCHEMA:
        db.execute(statement)


def insert_sightings(db: sqlite3.Connection, first_id: int,
                     sightings: Sequence[Sighting]) -> None:
    """Rows ``first_id, first_id + 1, ...`` of ``sightings``."""
    create_tables(db)
    db.executemany(
        "INSERT INTO sightings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(first_id + i, s.camera_name, s.source, float(s.time), int(s.track), *map(float, s.box),
          float(s.score), float(s.quality), s.frame_image) for i, s in enumerate(sightings)])


def mark_ingested(db: sqlite3.Connection, key: str, summary: dict[str, Any]) -> None:
    """Record that the source ``key`` is in the index."""
    create_tables(db)
    db.execute("INSERT OR REPLACE INTO ingested VALUES (?, ?)", (key, json.dumps(summary)))


def _has_tables(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sightings'"
                      ).fetchone() is not None


def ingested(db: sqlite3.Connection) -> dict[str, dict[str, Any]]:
    """key -> summary of every source in the index (empty for an index of crop folders)."""
    if not _has_tables(db):
        return {}
    return {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM ingested")}


def read_sightings(db: sqlite3.Connection, ids: Sequence[int]) -> dict[int, Sighting]:
    """id -> :class:`Sighting` of those of ``ids`` that have one."""
    if not ids or not _has_tables(db):
        return {}
    out: dict[int, Sighting] = {}
    ids = [int(i) for i in ids]
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        marks = ", ".join("?" * len(chunk))
        for row in db.execute(f"SELECT * FROM sightings WHERE id IN ({marks})", chunk):
            out[int(row[0])] = Sighting(row[1], row[2], row[3], row[4],
                                        (row[5], row[6], row[7], row[8]), row[9], row[10],
                                        row[11])
    return out


def track_ids(db: sqlite3.Connection, image_id: int) -> list[int]:
    """Ids of the crops of the track ``image_id`` belongs to (same camera, source and track),
    in time order; [] for a crop without a sighting."""
    if not _has_tables(db):
        return []
    row = db.execute("SELECT camera_name, source, track FROM sightings WHERE id = ?",
                     (int(image_id),)).fetchone()
    if row is None:
        return []
    return [int(r[0]) for r in db.execute(
        "SELECT id FROM sightings WHERE camera_name = ? AND source = ? AND track = ? "
        "ORDER BY time, id", tuple(row))]
