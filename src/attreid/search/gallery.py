"""One gallery interface over storage engines: the embedded default (FAISS + SQLite in a
folder, :class:`~attreid.search.index.GalleryIndex`) and Milvus (:mod:`attreid.search.milvus`,
Milvus Lite in a file or a Milvus server or cluster), driven by the same calls.

A :class:`Gallery` adds crops atomically (all or none become visible), searches with a
:class:`RowFilter`, fetches rows by id and counts rows. The filter is an attreid value, turned
into SQL (:meth:`RowFilter.sql`) or a Milvus boolean expression (:meth:`RowFilter.milvus`), so a
query means the same on every engine.

A filtered search never comes back short silently: :class:`Found` says how many crops the filter
allowed, and every backend returns ``min(k, allowed)`` hits: the FAISS side searches exactly
over the allowed ids (IVF: probing more lists until full), the Milvus side searches the allowed
rows exactly when they are few (:data:`~attreid.search.milvus.EXACT_ROWS`, as Milvus's own
server falls back to brute force under selective filters) and repeats a search that came back
short exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from attreid.search.index import GalleryIndex, GalleryIndexError
from attreid.search.metadata import Entry, probability_columns
from attreid.search.sources import _array_source

BACKENDS = ("faiss", "milvus")
"""``faiss``: FAISS + SQLite in an index folder (the default); ``milvus``: a Milvus collection
(``--uri``: a file path for Milvus Lite, ``http://host:19530`` for a server or cluster)."""

_COLUMNS = frozenset(c for _, _, c in probability_columns())


@dataclass(frozen=True)
class RowFilter:
    """Which crops a search, count or listing may see; every part optional (all: no filter).

    Attributes:
        below: only ids < ``below`` (the rows of one committed generation: a reader never
            mixes generations).
        cameras: camera numbers allowed (empty: all cameras).
        frames: ``(first, last)`` frame numbers, inclusive (crops without a frame number are
            then left out).
        minimums: ``(probability column, p)`` pairs: the crop's predicted probability in that
            column (``p_<task>_<class>``, :func:`~attreid.search.metadata.probability_columns`)
            is at least ``p``.

    Raises:
        ValueError: an unknown column, a probability outside [0, 1], a negative or reversed
            frame range.
    """

    below: int | None = None
    cameras: tuple[int, ...] = ()
    frames: tuple[int, int] | None = None
    minimums: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for column, p in self.minimums:
            if column not in _COLUMNS:
                raise ValueError(f"{column!r}: not a probability column of the index")
            if not 0.0 <= float(p) <= 1.0:
                raise ValueError(f"{column} >= {p}: a probability is between 0 and 1")
        if self.frames is not None and not 0 <= self.frames[0] <= self.frames[1]:
            raise ValueError(f"frames {self.frames}: expected (first, last), 0 <= first <= last")

    @property
    def filters(self) -> bool:
        """Whether anything but ``below`` narrows the rows."""
        return bool(self.cameras or self.frames is not None or self.minimums)

    def sql(self) -> tuple[str, list[Any]]:
        """``(WHERE condition, parameters)`` over the ``images`` table (``"1"``: every row)."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.below is not None:
            clauses.append("id < ?")
            params.append(int(self.below))
        for column, p in self.minimums:
            clauses.append(f"{column} >= ?")  # a schema column, checked above
            params.append(float(p))
        if self.cameras:
            clauses.append(f"camera IN ({', '.join('?' * len(self.cameras))})")
            params.extend(int(c) for c in self.cameras)
        if self.frames is not None:
            clauses.append("frame BETWEEN ? AND ?")
            params.extend(int(f) for f in self.frames)
        return (" AND ".join(clauses) or "1"), params

    def milvus(self) -> str:
        """The same condition as a Milvus boolean expression (``""``: every row). Numbers are
        written exactly (``repr`` of the float); a missing camera or frame is -1 there."""
        clauses: list[str] = []
        if self.below is not None:
            clauses.append(f"id < {int(self.below)}")
        clauses += [f"{column} >= {float(p)!r}" for column, p in self.minimums]
        if self.cameras:
            clauses.append(f"camera in [{', '.join(str(int(c)) for c in self.cameras)}]")
        if self.frames is not None:
            clauses.append(f"(frame >= {int(self.frames[0])} and frame <= {int(self.frames[1])})")
        return " and ".join(clauses)


@dataclass(frozen=True)
class Found:
    """What :meth:`Gallery.search` found.

    Attributes:
        distances: (Q, k') float32, nearest first (Euclidean or cosine distance, as trained).
        ids: (Q, k') int64; k' = min(k, allowed).
        allowed: crops the filter let through (the whole committed gallery without one).
        exact: whether every row was ranked exactly (brute force or a flat index).
    """

    distances: np.ndarray
    ids: np.ndarray
    allowed: int
    exact: bool


class Gallery(Protocol):
    """What the query layer needs of a gallery store, whatever the engine.

    ``location`` names it in messages (an index folder, or ``uri#collection``); ``info`` holds
    the model's sha256, metric (``euclidean``/``cosine``) and dimension as
    :func:`~attreid.search.build.write_index` records them.
    """

    location: str
    info: dict[str, Any]

    def __len__(self) -> int: ...

    def add(self, paths: Sequence[str], embeddings: np.ndarray,
            probabilities: dict[str, np.ndarray]) -> int: ...

    def search(self, queries: np.ndarray, k: int, where: RowFilter | None = None) -> Found: ...

    def fetch(self, ids: Sequence[int]) -> list[Entry]: ...

    def count(self, where: RowFilter | None = None) -> int: ...

    def close(self) -> None: ...


class FaissGallery:
    """:class:`Gallery` over an index folder (FAISS vectors + SQLite rows). Adds go through
    the folder's writer lock (a second writer waits, then appends after the first); a killed
    add leaves the previous generation (:mod:`attreid.search.index`)."""

    def __init__(self, index: GalleryIndex) -> None:
        self.index = index
        self.location = str(index.root)

    @classmethod
    def open(cls, root: Path | str) -> "FaissGallery":
        return cls(GalleryIndex.open(root))

    @property
    def info(self) -> dict[str, Any]:
        return self.index.info

    def __len__(self) -> int:
        return len(self.index)

    def add(self, paths: Sequence[str], embeddings: np.ndarray,
            probabilities: dict[str, np.ndarray]) -> int:
        return self.index.append_arrays(list(paths), embeddings, probabilities)

    def count(self, where: RowFilter | None = None) -> int:
        sql, params = _committed(where, len(self)).sql()
        return self.index.count(sql, params)

    def allowed_ids(self, where: RowFilter) -> np.ndarray:
        """Ids of the committed rows ``where`` lets through, ascending."""
        sql, params = _committed(where, len(self)).sql()
        return np.array([i for i, _ in self.index.select(sql, params)], dtype=np.int64)

    def search(self, queries: np.ndarray, k: int, where: RowFilter | None = None) -> Found:
        allowed = None if where is None or not where.filters else self.allowed_ids(where)
        n = len(self) if allowed is None else len(allowed)
        distances, ids = self.index.search(np.asarray(queries), k, allowed)
        return Found(distances, ids, n, exact=self.index.info["kind"] == "flat")

    def fetch(self, ids: Sequence[int]) -> list[Entry]:
        return self.index.entries(ids)

    def close(self) -> None:
        self.index.close()


def _committed(where: RowFilter | None, count: int) -> RowFilter:
    """``where`` limited to the ``count`` committed rows."""
    where = where or RowFilter()
    below = count if where.below is None else min(where.below, count)
    return RowFilter(below, where.cameras, where.frames, where.minimums)


def check_rows(paths: Sequence[str], embeddings: np.ndarray,
               probabilities: dict[str, np.ndarray]) -> None:
    """Raise :class:`GalleryIndexError` unless ``embeddings`` is (N, D) for N ``paths``, the
    paths are distinct and every task has (N, C) probabilities."""
    _array_source(list(paths), embeddings, probabilities)  # shape and task checks
    if len(set(paths)) != len(paths):
        raise GalleryIndexError("the same crop path twice in one add; nothing added")
