"""Search by description from columns held in memory (issue 32): the metadata columns a query
reads (attribute probabilities, camera, frame), copied once from the gallery as numpy arrays,
then each query is a mask, a product and a partial sort.

Measured at 10^6 crops (``benchmarks/description_engines.py``, benchmarks/RESULTS.md "Description
search engines"): one SQLite query scans the whole table for every description (no index orders
by a product of columns), DuckDB over an in-memory copy answers the same SQL faster, and numpy
over the same copy faster again, with nothing to install. The copy costs a scan per column the
first time it is asked for, so it pays in a process that answers many queries (``attreid
serve``, the web page) and on Milvus, whose scan streams every row through the client; a
one-shot command on a folder gallery keeps the single SQLite query.

Answers equal :meth:`~attreid.search.gallery.Gallery.products` exactly: the values are the
stored float32 probabilities in float64, multiplied left to right as SQLite does, ties broken by
the lower id.
"""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from attreid.search.filters import RowFilter, visible


def product(values: Sequence[np.ndarray]) -> np.ndarray:
    """Elementwise product of equal-length float64 arrays, multiplied left to right as SQLite
    evaluates ``a * b * c`` (so every engine's ties fall alike)."""
    score = np.array(values[0], dtype=np.float64)
    for more in values[1:]:
        score *= more
    return score


class ColumnSource(Protocol):
    """A gallery's committed rows, one column at a time (every engine has ``column``)."""

    def __len__(self) -> int: ...

    def column(self, name: str) -> np.ndarray: ...


class ColumnStore:
    """Columns of the ``len(gallery)`` rows a search holds, loaded on first use.

    The gallery's rows do not change under it: a search over a newer generation makes a new
    store (:meth:`~attreid.search.query.GallerySearch.reopened`).
    """

    def __init__(self, gallery: ColumnSource) -> None:
        self.gallery = gallery
        self.rows = len(gallery)
        self._held: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        """Column ``name`` (rows,) float64; NaN where a camera or frame is unknown."""
        if name not in self._held:
            values = np.asarray(self.gallery.column(name), dtype=np.float64)[: self.rows]
            if len(values) != self.rows:
                raise ValueError(f"column {name}: {len(values)} values for {self.rows} rows")
            self._held[name] = values
        return self._held[name]

    def mask(self, where: RowFilter | None) -> np.ndarray:
        """Rows ``where`` lets through (rows,) bool, as its SQL condition selects them."""
        flt = visible(where, self.rows)
        keep = np.zeros(self.rows, bool)
        keep[: flt.below] = True
        for column, p in flt.minimums:
            keep &= self[column] >= float(p)
        if flt.cameras:
            keep &= np.isin(self["camera"], np.asarray(flt.cameras, np.float64))
        if flt.frames is not None:
            frame = self["frame"]
            keep &= (frame >= flt.frames[0]) & (frame <= flt.frames[1])
        return keep

    def count(self, where: RowFilter | None = None) -> int:
        """Rows ``where`` lets through."""
        return int(self.mask(where).sum())

    def products(self, where: RowFilter | None, columns: Sequence[str], k: int | None = None,
                 offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, product of the probability columns)`` of the rows ``where`` lets through:
        all in id order (``k`` None), or the ``k`` best from rank ``offset`` (ties: lower id),
        as :meth:`Gallery.products` answers.

        Raises:
            ValueError: no columns, or one the gallery does not hold.
        """
        if not columns:
            raise ValueError("columns []: expected probability columns")
        ids = np.flatnonzero(self.mask(where))
        score = product([self[name][ids] for name in columns])
        if k is None:
            return ids, score
        want = int(offset) + int(k)
        if want <= 0:
            return ids[:0], score[:0]
        if want < len(ids):  # everything tied with the want-th best may belong to the page
            cut = np.partition(score, len(score) - want)[len(score) - want]
            ids, score = ids[score >= cut], score[score >= cut]
        order = np.lexsort((ids, -score))[int(offset):want]
        return ids[order], score[order]
