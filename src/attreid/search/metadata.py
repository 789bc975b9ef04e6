"""The SQLite side of an index: the ``images`` table of ``meta.sqlite`` and its rows.

Besides path, name, camera, frame and identity (parsed from Market-style names
``PPPP_cCsS_FFFFFF_BB.jpg`` when the name carries them), each row holds the predicted
probability of every class of every task in a column ``p_<task>_<class>``, so attribute
constraints are plain SQL.

``info["trained_tasks"]`` lists the tasks the model was trained on (the checkpoint's, see
:attr:`attreid.Predictor.trained_tasks`; an index without it is of a model trained on all
tasks). The columns of the other tasks hold the outputs of heads that never saw a label:
they are kept (the table has one layout) but never read: :class:`Entry` leaves those tasks out
and the query layer refuses constraints on them.

Paths and names are stored exactly: as TEXT when they are valid UTF-8, else (a file name with
bytes that are not UTF-8, which Python holds as lone surrogates, see ``os.fsdecode``) as a BLOB
of their UTF-8 encoding with the surrogates passed through (Python's ``surrogatepass``), which
reads back as the identical ``str``.
"""

from __future__ import annotations

import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from attreid.schema import TASK_NAMES, TASKS
from attreid.utils.files import printable_name

_MARKET_NAME = re.compile(r"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.")
_CAMERA_NAME = re.compile(r"(?:^|[_-])c(?:am)?(\d+)(?:s\d+)?[_-](?:f(?:rame)?)?(\d+)")


def probability_columns() -> list[tuple[str, int, str]]:
    """``(task, class index, column name)`` for every class of every task."""
    return [(task.name, i, f"p_{task.name}_{cls}")
            for task in TASKS for i, cls in enumerate(task.classes)]


def parse_name(name: str) -> tuple[int | None, int | None, int | None]:
    """``(identity, camera, frame)`` carried by a file name, ``None`` where it carries none.

    Market-1501 names (``0002_c1s1_000451_03.jpg``) give all three; names with ``c<N>`` /
    ``cam<N>`` followed by a frame number (``c3_000120.jpg``, ``cam2-f42.png``) give camera and
    frame.
    """
    match = _MARKET_NAME.match(name)
    if match:
        return int(match.group(1)), int(match.group(2)), int(match.group(4))
    match = _CAMERA_NAME.search(Path(name).stem)
    if match:
        return None, int(match.group(1)), int(match.group(2))
    return None, None, None


@dataclass(frozen=True)
class Entry:
    """One indexed crop."""

    id: int
    path: str
    camera: int | None
    frame: int | None
    identity: int | None
    probabilities: dict[str, list[float]]  # task -> class probabilities, trained tasks only
    trained_tasks: tuple[str, ...] = TASK_NAMES  # the index's (GalleryIndex.trained_tasks)
    time: float | None = None  # crops cut from footage: seconds since the epoch (UTC)
    track: int | None = None  # and the track id within their source
    camera_name: str | None = None  # and the camera's name as ingest was given it
    source: str | None = None  # and the video file or frame folder it was cut from

    @property
    def display_name(self) -> str:
        """The file name for people (:func:`attreid.utils.files.printable_name`: bytes that are
        not UTF-8 as ``\\xNN``); :attr:`path` is the exact one."""
        return printable_name(Path(self.path).name)

    def attributes(self) -> dict[str, dict[str, Any]]:
        """task -> {"value": most probable class, "probability": its probability}, for the
        tasks the model was trained on only (the others are unknown, not described)."""
        out = {}
        for task in TASKS:
            if task.name not in self.trained_tasks:
                continue
            probs = self.probabilities[task.name]
            best = int(np.argmax(probs))
            out[task.name] = {"value": task.classes[best], "probability": round(probs[best], 4)}
        return out


def _entry(row: tuple, cols: list[tuple[str, int, str]], trained: tuple[str, ...],
           sighting: Any = None) -> Entry:
    """An :class:`Entry` of an ``images`` row (and its footage sighting, when it has one)."""
    probs: dict[str, list[float]] = {name: [] for name in trained}
    for (task, _, _), value in zip(cols, row[5:]):
        probs[task].append(float(value))
    return Entry(id=int(row[0]), path=_from_sql(row[1]), camera=row[2], frame=row[3],
                 identity=row[4], probabilities=probs, trained_tasks=trained,
                 time=None if sighting is None else sighting.time,
                 track=None if sighting is None else sighting.track,
                 camera_name=None if sighting is None else sighting.camera_name,
                 source=None if sighting is None else sighting.source)


def _to_sql(text: str) -> str | bytes:
    """``text`` as SQLite stores it exactly: itself when it is valid UTF-8, else (lone
    surrogates: bytes of a file name that are not UTF-8) a BLOB of its UTF-8 encoding with the
    surrogates passed through (:func:`_from_sql` gives back the identical str)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
    return text


def _from_sql(value: str | bytes) -> str:
    """Inverse of :func:`_to_sql`."""
    return value.decode("utf-8", "surrogatepass") if isinstance(value, bytes) else value


def _probability_rows(probabilities: dict[str, np.ndarray]) -> np.ndarray:
    """task -> (N, C) as (N, P) in the order of :func:`probability_columns` (dtype kept)."""
    return np.concatenate([np.asarray(probabilities[t.name]) for t in TASKS], axis=1)


def _rows(paths: Sequence[Path | str], probabilities: np.ndarray, start: int) -> list[tuple]:
    """SQLite rows of N crops; ``probabilities`` (N, P) as :func:`_probability_rows`."""
    rows = []
    for i, (path, probs) in enumerate(zip(paths, probabilities.tolist())):
        name = Path(path).name
        identity, camera, frame = parse_name(name)
        rows.append((start + i, _to_sql(str(path)), _to_sql(name), camera, frame, identity,
                     *probs))
    return rows


def _insert(db: sqlite3.Connection, rows: list[tuple]) -> None:
    if rows:
        marks = ", ".join("?" * len(rows[0]))
        db.executemany(f"INSERT INTO images VALUES ({marks})", rows)


def _set_info(db: sqlite3.Connection, values: dict[str, Any]) -> None:
    # ASCII JSON: a path (images_root, checkpoint) with bytes that are not UTF-8 is kept as
    # \u escapes, read back exactly
    db.executemany("INSERT OR REPLACE INTO info VALUES (?, ?)",
                   [(k, json.dumps(v, ensure_ascii=True)) for k, v in values.items()])


def _create_schema(db: sqlite3.Connection) -> None:
    probs = ", ".join(f"{c} REAL NOT NULL" for _, _, c in probability_columns())
    db.execute("CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, "
               "name TEXT NOT NULL, camera INTEGER, frame INTEGER, identity INTEGER, "
               f"{probs})")
    db.execute("CREATE INDEX images_camera ON images (camera)")
