"""The value that says which crops a gallery read may see (:class:`RowFilter`), in SQL and in a
Milvus expression, and what a search found (:class:`Found`). Every gallery engine
(:mod:`attreid.search.gallery`) takes these, so a query means the same on each."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from attreid.search.metadata import probability_columns

_COLUMNS = frozenset(c for _, _, c in probability_columns())


def check_column(name: str) -> str:
    """``name`` when it is a column a gallery reads whole (:meth:`Gallery.column`): a
    probability column (``p_<task>_<class>``), ``camera`` or ``frame``.

    Raises:
        ValueError: any other name.
    """
    if name not in _COLUMNS and name not in ("camera", "frame"):
        raise ValueError(f"{name!r}: not a column of the index (a probability column, "
                         "camera or frame)")
    return name


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


def visible(where: RowFilter | None, count: int) -> RowFilter:
    """``where`` limited to the ``count`` committed rows."""
    where = where or RowFilter()
    below = count if where.below is None else min(where.below, count)
    return RowFilter(below, where.cameras, where.frames, where.minimums)
