"""Cases on disk: one SQLite file of named cases, their queries, the sightings marked right or
wrong, and notes.

A mark keeps a *snapshot* of the sighting (the crop's full path, camera, time, frame, track,
box, the distance and P(same) it was found at, its attributes, the frame file): the case stays
whole when the index is rebuilt (ids change) or moved. A mark is keyed by the crop's path, so
marking a crop again changes its mark instead of adding a second one.

Concurrency: SQLite in WAL mode with a busy timeout; every change is one transaction, so two
people (or the page and the CLI) writing one case at once both land, and a crash loses at most
the change in flight, never the file.
"""

from __future__ import annotations

import json
import sqlite3
import time
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from attreid.errors import AttreidError

SCHEMA_VERSION = 1
MARKS = ("right", "wrong")
"""A sighting is confirmed (``right``: the person) or rejected (``wrong``: not the person)."""

MAX_NAME = 80
BUSY_TIMEOUT_S = 30.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS cases (name TEXT PRIMARY KEY, created TEXT NOT NULL, "
    "context TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS queries (n INTEGER PRIMARY KEY AUTOINCREMENT, "
    "case_name TEXT NOT NULL REFERENCES cases(name), at TEXT NOT NULL, kind TEXT NOT NULL, "
    "detail TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS marks (case_name TEXT NOT NULL REFERENCES cases(name), "
    "path TEXT NOT NULL, mark TEXT NOT NULL, note TEXT NOT NULL, at TEXT NOT NULL, "
    "snapshot TEXT NOT NULL, PRIMARY KEY (case_name, path))",
    "CREATE TABLE IF NOT EXISTS notes (n INTEGER PRIMARY KEY AUTOINCREMENT, "
    "case_name TEXT NOT NULL REFERENCES cases(name), at TEXT NOT NULL, text TEXT NOT NULL)",
)


class CaseError(AttreidError, ValueError):
    """A case operation that cannot be done: unknown case (the known ones named), a bad name
    or mark, an unreadable or foreign case file."""


def now() -> str:
    """The current time, ISO 8601 UTC with milliseconds."""
    moment = datetime.now(timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def check_name(name: str) -> str:
    """A case name, stripped: 1 to 80 printable characters, no ``/`` or ``\\`` (a file name and
    the page's addresses are made from it).

    Raises:
        CaseError: empty, too long, with control characters or a slash.
    """
    text = str(name).strip()
    if not text:
        raise CaseError("a case needs a name")
    if len(text) > MAX_NAME:
        raise CaseError(f"case name {text[:20]!r}...: at most {MAX_NAME} characters")
    if any(unicodedata.category(c).startswith("C") for c in text):
        raise CaseError(f"case name {text!r}: control characters are not allowed")
    if "/" in text or "\\" in text:
        raise CaseError(f"case name '{text}': no / or \\ (it is part of the page's addresses); "
                        "write a date as 05-12 or 5 Dec")
    return text


@dataclass
class Mark:
    """A sighting marked in a case: ``mark`` (right/wrong), ``note``, when (``at``, ISO UTC)
    and the ``snapshot`` of the sighting (see the module docstring)."""

    path: str
    mark: str
    note: str
    at: str
    snapshot: dict[str, Any]


@dataclass
class Case:
    """A case: its ``name``, ``created`` (ISO UTC), ``context`` (the model, calibration and
    operating point it was worked with), ``queries``, ``marks`` and ``notes``, oldest first."""

    name: str
    created: str
    context: dict[str, Any]
    queries: list[dict[str, Any]] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)

    def confirmed(self) -> list[Mark]:
        return [m for m in self.marks if m.mark == "right"]

    def rejected(self) -> list[Mark]:
        return [m for m in self.marks if m.mark == "wrong"]


class CaseStore:
    """The case file (SQLite). Each method is one transaction; safe from several threads and
    processes (WAL, busy timeout :data:`BUSY_TIMEOUT_S`)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._connect() as db:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.execute("INSERT OR IGNORE INTO meta VALUES ('version', ?)",
                           (str(SCHEMA_VERSION),))
                version = db.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
        except sqlite3.DatabaseError as exc:
            raise CaseError(f"{self.path}: not a readable case file ({exc})") from None
        except OSError as exc:
            raise CaseError(f"{self.path}: cannot create the case file ({exc})") from None
        if int(version[0]) > SCHEMA_VERSION:
            raise CaseError(f"{self.path}: case file version {version[0]} is newer than this "
                            f"attreid reads ({SCHEMA_VERSION}): upgrade attreid")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA foreign_keys=ON")
        return db

    def _transaction(self, write: bool = True) -> "_Tx":
        return _Tx(self._connect(), write)

    def names(self) -> list[str]:
        """Every case's name, oldest first."""
        with self._transaction(write=False) as db:
            return [r[0] for r in db.execute("SELECT name FROM cases ORDER BY created, name")]

    def create(self, name: str, context: dict[str, Any]) -> Case:
        """A new case ``name`` worked with ``context`` (model, calibration, operating point).

        Raises:
            CaseError: a bad name, or a case of that name exists.
        """
        name = check_name(name)
        with self._transaction() as db:
            try:
                db.execute("INSERT INTO cases VALUES (?, ?, ?)",
                           (name, now(), json.dumps(context, sort_keys=True)))
            except sqlite3.IntegrityError:
                raise CaseError(f"case {name!r} exists already") from None
        return self.get(name)

    def get(self, name: str) -> Case:
        """The case ``name`` with all it holds.

        Raises:
            CaseError: no such case (the known ones named).
        """
        with self._transaction(write=False) as db:
            row = db.execute("SELECT name, created, context FROM cases WHERE name = ?",
                             (str(name).strip(),)).fetchone()
            if row is None:
                raise self._unknown(db, name)
            case = Case(row[0], row[1], json.loads(row[2]))
            args = (case.name,)
            case.queries = [{"at": at, "kind": kind, **json.loads(detail)} for at, kind, detail
                            in db.execute("SELECT at, kind, detail FROM queries WHERE "
                                          "case_name = ? ORDER BY n", args)]
            case.marks = [Mark(p, m, note, at, json.loads(snap)) for p, m, note, at, snap
                          in db.execute("SELECT path, mark, note, at, snapshot FROM marks "
                                        "WHERE case_name = ? ORDER BY at, path", args)]
            case.notes = [{"at": at, "text": text} for at, text in db.execute(
                "SELECT at, text FROM notes WHERE case_name = ? ORDER BY n", args)]
        return case

    def _unknown(self, db: sqlite3.Connection, name: str) -> CaseError:
        known = [r[0] for r in db.execute("SELECT name FROM cases ORDER BY name")]
        return CaseError(f"no case {name!r} in {self.path}; cases: "
                         f"{', '.join(map(repr, known)) or 'none yet'}")

    def _require(self, db: sqlite3.Connection, name: str) -> str:
        name = str(name).strip()
        if db.execute("SELECT 1 FROM cases WHERE name = ?", (name,)).fetchone() is None:
            raise self._unknown(db, name)
        return name

    def add_query(self, name: str, kind: str, detail: dict[str, Any]) -> int:
        """Record a query run for the case (``kind``: image, indexed image, description...);
        returns how many queries the case holds now."""
        with self._transaction() as db:
            name = self._require(db, name)
            db.execute("INSERT INTO queries (case_name, at, kind, detail) VALUES (?, ?, ?, ?)",
                       (name, now(), str(kind), json.dumps(detail, sort_keys=True)))
            return _count(db, "queries", name)

    def mark(self, name: str, snapshot: dict[str, Any], mark: str, note: str = "") -> Mark:
        """Mark a sighting ``right`` or ``wrong`` (again: the mark and note are replaced).

        Args:
            snapshot: the sighting's fields; ``snapshot["path"]`` (the crop's file) keys it.

        Raises:
            CaseError: unknown case, a mark not in :data:`MARKS`, a snapshot without a path.
        """
        if mark not in MARKS:
            raise CaseError(f"mark {mark!r}: expected one of {', '.join(MARKS)}")
        path = str(snapshot.get("path") or "")
        if not path:
            raise CaseError("a marked sighting needs the path of its crop")
        at = now()
        with self._transaction() as db:
            name = self._require(db, name)
            db.execute("INSERT OR REPLACE INTO marks VALUES (?, ?, ?, ?, ?, ?)",
                       (name, path, mark, str(note), at, json.dumps(snapshot, sort_keys=True)))
        return Mark(path, mark, str(note), at, snapshot)

    def unmark(self, name: str, path: str) -> bool:
        """Take a sighting's mark away; whether it had one."""
        with self._transaction() as db:
            name = self._require(db, name)
            gone = db.execute("DELETE FROM marks WHERE case_name = ? AND path = ?",
                              (name, str(path))).rowcount
        return gone > 0

    def add_note(self, name: str, text: str) -> int:
        """Add a note to the case (kept with its time; notes are never rewritten); returns how
        many notes the case holds now.

        Raises:
            CaseError: unknown case or an empty note.
        """
        if not str(text).strip():
            raise CaseError("an empty note")
        with self._transaction() as db:
            name = self._require(db, name)
            db.execute("INSERT INTO notes (case_name, at, text) VALUES (?, ?, ?)",
                       (name, now(), str(text).strip()))
            return _count(db, "notes", name)


def _count(db: sqlite3.Connection, table: str, name: str) -> int:
    """Rows of ``table`` (queries or notes) that belong to case ``name``."""
    return int(db.execute(f"SELECT COUNT(*) FROM {table} WHERE case_name = ?",
                          (name,)).fetchone()[0])


class _Tx:
    """``with`` a connection: BEGIN IMMEDIATE for a writer (writers queue at once instead of
    failing on upgrade), BEGIN for a reader (WAL: never blocked), COMMIT or ROLLBACK, close."""

    def __init__(self, db: sqlite3.Connection, write: bool) -> None:
        self.db, self.begin = db, "BEGIN IMMEDIATE" if write else "BEGIN"

    def __enter__(self) -> sqlite3.Connection:
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self.db.execute(self.begin)
                return self.db
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    self.db.close()
                    raise CaseError(f"the case file is busy ({exc})") from None
                time.sleep(0.05)

    def __exit__(self, kind: Any, *_: Any) -> None:
        try:
            self.db.execute("ROLLBACK" if kind else "COMMIT")
        finally:
            self.db.close()


def iter_cases(store: CaseStore) -> Iterator[Case]:
    """Every case of ``store``, oldest first."""
    for name in store.names():
        yield store.get(name)
