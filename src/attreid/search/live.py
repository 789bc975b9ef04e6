"""A search that follows its index folder: each request sees one generation, and a new one
(crops added by ``attreid index add``, or the folder rebuilt by ``index build --overwrite``) is
picked up without a restart.

A :class:`~attreid.search.query.GallerySearch` holds the FAISS vectors of the generation it
opened; the rows of ``meta.sqlite`` are read on each query. Its queries see only rows below the
number of vectors it holds (:meth:`GallerySearch._where`), so an add committed by another
process is invisible to it rather than mixed in. :class:`LiveSearch` notices the new generation
(at most every ``watch_s`` seconds, on a request, or when asked) by two cheap checks: the
identity (device, inode) of ``meta.sqlite`` (a rebuilt folder is a new file) and the committed
``(generation, vectors file)`` (:meth:`GalleryIndex.committed`: an add). It then opens the
folder afresh and swaps the search in one assignment; requests already running finish on the
old one, and every cache computed from the old rows (the P(person) of the crops) goes with it.
While one request reloads, the others go on with the generation held.

:attr:`Snapshot.token` names a build (a new one when the file is replaced, kept across adds,
which never change what an id names): the service's image ETags carry it, so a thumbnail cached
by a browser is never taken for the crop of a rebuilt index.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from attreid.search.engines import open_location, parse_location
from attreid.search.gallery import Gallery
from attreid.search.index import DATABASE, GalleryIndexError
from attreid.search.query import GallerySearch

OPEN_TRIES = 3
"""Attempts to open a new generation (an open racing a writer may read a half-switched
folder); after the last the old generation stays in service and :attr:`LiveSearch.error` says
why."""


@dataclass(frozen=True)
class Snapshot:
    """One generation of the index folder, as served: the search over it, the identity of its
    ``meta.sqlite`` (st_dev, st_ino), its ``(generation, vectors file)`` and its build token."""

    search: GallerySearch
    file: tuple[int, int]
    state: tuple[int, Any]
    token: str

    @property
    def generation(self) -> int:
        return self.state[0]


class LiveSearch:
    """The current :class:`Snapshot` of an index folder, reopened when the folder changes.

    Args:
        search: the search opened on the folder (its model and calibration are kept).
        watch_s: look for a new generation at most this often, in seconds, when a request asks
            (0: on every request; the check is one ``stat`` and one small SQLite query).
        clock: seconds, monotonic (tests pass their own).
    """

    def __init__(self, search: GallerySearch, watch_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.watch_s, self._clock = float(watch_s), clock
        self._reload = threading.Lock()  # one check or reload at a time
        self._checked = clock()
        self.error: str | None = None  # why the last reload failed (the old one still serves)
        self.reloads = 0
        index = search.index
        self._current = Snapshot(search, _identity(index.location), _state(index),
                                 uuid.uuid4().hex[:16])

    @property
    def root(self) -> Path:
        return Path(self._current.search.index.location)

    def current(self) -> Snapshot:
        """The generation in service, looking for a newer one first when ``watch_s`` has passed
        since the last look (unless another request is already looking: it then goes on with
        the one held)."""
        if self._clock() - self._checked >= self.watch_s and self._reload.acquire(blocking=False):
            try:
                self._check()
            finally:
                self._reload.release()
        return self._current

    def reload(self) -> bool:
        """Look for a new generation now (waiting for a look in progress); True when one was
        opened. A failure leaves the old one in service and sets :attr:`error`."""
        with self._reload:
            return self._check()

    def _check(self) -> bool:
        self._checked = self._clock()
        held = self._current
        try:
            if not self._changed(held):
                return False
            fresh, file = _reopen(held.search)
        except (GalleryIndexError, OSError) as exc:
            self.error = str(exc)
            return False
        token = held.token if file == held.file else uuid.uuid4().hex[:16]
        self._current = Snapshot(fresh, file, _state(fresh.index), token)  # the swap
        self.error, self.reloads = None, self.reloads + 1
        return True

    @staticmethod
    def _changed(held: Snapshot) -> bool:
        try:
            file = _identity(held.search.index.location)
        except FileNotFoundError:  # a rebuild between removing the old folder and the rename
            return False
        if file != held.file:
            return True
        try:
            return held.search.index.committed() != held.state
        except Exception as exc:  # sqlite3.Error, a damaged info row: keep the generation held
            raise GalleryIndexError(f"{held.search.index.location}: cannot read the "
                                    f"index's generation ({type(exc).__name__}: {exc})") from exc

    def status(self) -> dict[str, object]:
        """What ``/healthz`` reports of the generation in service."""
        held = self._current
        return {"generation": held.generation, "vectors": held.state[1], "build": held.token,
                "reloads": self.reloads, "reload_error": self.error}


def _identity(location: str) -> tuple[int, int]:
    """(st_dev, st_ino) of an index folder's database (a rebuilt folder is another file);
    (0, 0) for a Milvus gallery, whose rebuilds are generations of one alias."""
    if parse_location(location)[0] != "faiss":
        return 0, 0
    st = os.stat(Path(location) / DATABASE)
    return st.st_dev, st.st_ino


def _state(index: Gallery) -> tuple[int, Any]:
    """What :meth:`committed` says of the generation held: (generation, vectors file) of an
    index folder, (generation, committed rows) of a Milvus gallery."""
    info = index.info
    return int(info.get("generation", 0)), info["vectors"] if "vectors" in info else int(
        info["count"])


def _reopen(search: GallerySearch) -> tuple[GallerySearch, tuple[int, int]]:
    """The search over a fresh open of its folder, and the identity of the file opened.

    Raises:
        GalleryIndexError: the folder cannot be opened, or holds an index of another model.
    """
    index, file = _open_settled(search.index.location)
    try:
        return search.reopened(index), file
    except GalleryIndexError:
        index.close()
        raise


def _open_settled(root: str) -> tuple[Gallery, tuple[int, int]]:
    """Open ``root``, the file's identity the same on both sides of the open and the generation
    read by the open still the committed one (else a writer came between: open again, up to
    :data:`OPEN_TRIES` times)."""
    error: Exception | None = None
    for attempt in range(OPEN_TRIES):
        try:
            before = _identity(root)
            index = open_location(root)
            if _identity(root) == before and index.committed() == _state(index):
                return index, before
            index.close()
        except (GalleryIndexError, FileNotFoundError) as exc:
            error = exc
        time.sleep(0.05 * (attempt + 1))
    why = f"({error})" if error is not None else "(it kept changing while it was opened)"
    raise GalleryIndexError(f"{root}: cannot open the new generation of the index, the old one "
                            f"stays in service {why}")
