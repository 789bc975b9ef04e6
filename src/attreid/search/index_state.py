"""The files of an index folder as a reader finds them: its database connection, the info
table, the last committed generation's FAISS vectors (read again when a writer switched
generations meanwhile) and the strays of killed writers. Used by
:class:`~attreid.search.index.GalleryIndex`."""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

from attreid.schema import trained_tasks_of
from attreid.search.storage import (
    READ_TIMEOUT_S,
    GalleryIndexError,
    busy_error,
    is_locked,
    read_vectors,
    remove_scratch,
    try_writer_lock,
)

FORMAT_VERSION = 1
DATABASE = "meta.sqlite"


def connect(db_path: Path) -> sqlite3.Connection:
    try:
        return sqlite3.connect(db_path, timeout=READ_TIMEOUT_S, check_same_thread=False)
    except sqlite3.Error as exc:
        raise GalleryIndexError(f"{db_path}: cannot open the index database ({exc})") from exc


def read_info(db: sqlite3.Connection, db_path: Path) -> tuple[dict[str, Any], int]:
    """``(info, number of image rows)``, read in one statement (one snapshot: a writer's
    commit never falls between the two)."""
    try:
        rows = db.execute("SELECT key, value, (SELECT COUNT(*) FROM images) FROM info"
                          ).fetchall()
        info = {k: json.loads(v) for k, v, _ in rows}
    except sqlite3.OperationalError as exc:
        if is_locked(exc):
            raise busy_error(db_path, exc) from exc
        raise GalleryIndexError(f"{db_path}: corrupt index database ({exc})") from exc
    except (sqlite3.Error, json.JSONDecodeError) as exc:
        raise GalleryIndexError(f"{db_path}: corrupt index database ({exc})") from exc
    return info, int(rows[0][2]) if rows else 0


def check_info(info: dict[str, Any], db_path: Path) -> None:
    if info.get("format") != FORMAT_VERSION:
        raise GalleryIndexError(f"{db_path}: index format {info.get('format')!r}, "
                                f"this attreid reads {FORMAT_VERSION}; rebuild the index")
    missing = [k for k in ("vectors", "dim", "metric", "kind") if k not in info]
    if missing:
        raise GalleryIndexError(f"{db_path}: damaged index, its info table lacks "
                                f"{', '.join(missing)}; rebuild it with `attreid index build`")


def read_state(root: Path, db: sqlite3.Connection) -> tuple[dict[str, Any], Any]:
    """``(info, FAISS vectors)`` of the index's last committed generation. A writer may
    commit the next one and delete this one's vectors file between the two reads: then
    read again."""
    db_path = root / DATABASE
    for _ in range(5):
        info, count = read_info(db, db_path)
        check_info(info, db_path)
        try:
            vectors = read_vectors(root / info["vectors"], info)
        except GalleryIndexError:
            if read_info(db, db_path)[0].get("vectors") == info["vectors"]:
                raise
            continue  # a newer generation was committed meanwhile
        if vectors.ntotal != count:
            raise GalleryIndexError(f"{root}: {vectors.ntotal} vectors but {count} image rows; "
                                    "the index is damaged, rebuild it")
        return info, vectors
    raise GalleryIndexError(f"{root}: the index changed at every read (writers at work); "
                            "try again")


def trained_tasks(info: dict[str, Any], where: Path) -> tuple[str, ...]:
    """``info["trained_tasks"]`` in the order of ``TASK_NAMES``; all tasks when absent."""
    try:
        return trained_tasks_of(info.get("trained_tasks"))
    except ValueError as exc:
        raise GalleryIndexError(f"{where}: damaged index info ({exc}); rebuild it with "
                                "`attreid index build`") from None


def remove_strays_unless_writing(root: Path, db: sqlite3.Connection) -> None:
    """Remove what killed writers left (a vectors file never committed, scratch folders),
    only while holding the writer lock: a live writer's new file is not a stray."""
    fd = try_writer_lock(root)
    if fd is None:  # a writer is at work, or the folder is read-only to us
        return
    try:
        current = read_info(db, root / DATABASE)[0].get("vectors")  # under the lock: fresh
        if current:
            _remove_strays(root, current)
        remove_scratch(root)
    except GalleryIndexError:
        pass  # busy or unreadable now: strays are harmless, removed another time
    finally:
        os.close(fd)


def _remove_strays(root: Path, current: str) -> None:
    for path in root.glob("*vectors-*.faiss*"):
        if path.name != current:
            try:
                path.unlink()
            except OSError:  # read-only index folder: strays are harmless
                pass
