"""A searchable gallery: FAISS vectors + SQLite metadata in one folder, opened for search.

Layout of an index folder::

    INDEX/
      meta.sqlite        # table ``info`` (key -> JSON value) and table ``images``
      vectors-<N>.faiss  # the FAISS index named by info["vectors"]; N = its generation

Row ``id`` of ``images`` is the FAISS id of its vector (ids are positions in add order, so
no id map is needed). Rows: :mod:`attreid.search.metadata` (and, from footage,
:mod:`attreid.search.sightings`); FAISS: :mod:`attreid.search.vectors`; writing:
:mod:`attreid.search.build`; rows to index: :mod:`attreid.search.sources`.

Updates are atomic: :meth:`GalleryIndex.append_store` writes the next generation's vectors
file first, then inserts the rows and switches ``info["vectors"]`` in one SQLite transaction,
then deletes the previous file. A crash leaves the old index or the new one, never a mix; a
stray file of an unfinished add is removed at the next open (when no writer is at work). A
new index is built in a temporary folder and renamed into place.

Writers are serialised by the folder's writer lock (:mod:`attreid.search.storage`): an add
re-reads the index from disk under it, so two adds at once both land, one after the other.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from attreid.inference.features import FeatureStore
from attreid.search.filters import Found, RowFilter, check_column, visible
from attreid.search.index_state import (
    DATABASE,
    FORMAT_VERSION,
    connect,
    read_info,
    read_state,
    remove_strays_unless_writing,
    trained_tasks,
)
from attreid.search.metadata import Entry, _entry, _from_sql, _insert, _rows, _set_info
from attreid.search.metadata import probability_columns
from attreid.search.sightings import Sighting, ingested, read_sightings, track_ids
from attreid.search.sources import (
    WRITE_CHUNK,
    RowsHook,
    _array_source,
    _Source,
    _store_source,
    _without,
)
from attreid.search.storage import (
    GalleryIndexError,
    busy_error,
    disk_full,
    is_locked,
    space_needed,
    write_vectors,
    writer_lock,
)
from attreid.search.vectors import EXACT_ROWS, _faiss, exact_search, faiss_to_distance
from attreid.search.vectors import prepare_vectors
from attreid.utils.files import file_sha256


__all__ = ["DATABASE", "FORMAT_VERSION", "WRITE_CHUNK", "GalleryIndex", "GalleryIndexError"]


class GalleryIndex:
    """An index folder opened for search (and for :meth:`add`).

    Thread-safe for concurrent searches: SQLite reads take a lock, FAISS searches are
    read-only.
    """

    scans_by_query = True  # one SQLite query ranks the rows by a product of columns

    def __init__(self, root: Path, db: sqlite3.Connection, vectors: Any,
                 info: dict[str, Any]) -> None:
        self.root = root
        self._db = db
        self._lock = threading.Lock()
        self.vectors = vectors
        self.info = info
        self.trained_tasks: tuple[str, ...] = trained_tasks(info, root / DATABASE)

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path | str) -> "GalleryIndex":
        """Open an index folder made by :func:`build_index`.

        A writer at work (another process adding crops) is no damage: the index is read as
        its last committed generation, waiting up to :data:`READ_TIMEOUT_S` for a commit.
        Stray files of killed writers (a vectors file never committed, scratch folders beside
        the index) are removed when no writer is at work.

        Raises:
            GalleryIndexError: missing folder or files, unknown format, or vectors and
                metadata that disagree; the message names the file. A writer that holds the
                database longer than :data:`READ_TIMEOUT_S`: a message saying so (try again).
        """
        root = Path(root)
        db_path = root / DATABASE
        if not db_path.is_file():
            raise GalleryIndexError(f"{root}: not an attreid index ({DATABASE} not found); "
                                    "make one with `attreid index build`")
        db = connect(db_path)
        try:
            info, vectors = read_state(root, db)
            remove_strays_unless_writing(root, db)
        except BaseException:
            db.close()
            raise
        return cls(root, db, vectors, info)

    def close(self) -> None:
        self._db.close()

    def __len__(self) -> int:
        return int(self.vectors.ntotal)

    @property
    def metric(self) -> str:
        return str(self.info["metric"])

    def check_checkpoint(self, checkpoint: Path | str, digest: str | None = None) -> None:
        """Raise :class:`GalleryIndexError` unless ``checkpoint`` is the one that made the index
        (``digest``: its sha256 when known, e.g. an ONNX export's source checkpoint)."""
        digest = digest or file_sha256(Path(checkpoint))
        if digest != self.info["checkpoint_sha256"]:
            raise GalleryIndexError(
                f"{checkpoint}: this checkpoint did not make the index {self.root} (sha256 "
                f"{digest[:12]}..., the index was made by {self.info['checkpoint']} with sha256 "
                f"{self.info['checkpoint_sha256'][:12]}...); embeddings of different models "
                "cannot be compared")

    # ---- reading -------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._db.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                if is_locked(exc):  # a writer held the database past READ_TIMEOUT_S
                    raise busy_error(self.root / DATABASE, exc) from exc
                raise

    def entries(self, ids: Sequence[int]) -> list[Entry]:
        """Rows of ``ids``, in that order (with time and track for crops cut from footage).

        Raises:
            KeyError: an id is not in the index.
        """
        ids = [int(i) for i in ids]
        if not ids:
            return []
        cols = [c for c in probability_columns() if c[0] in self.trained_tasks]
        names = "".join(f", {c}" for _, _, c in cols)
        rows = {}
        for start in range(0, len(ids), 500):  # SQLite's variable limit
            chunk = ids[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            for row in self._query(f"SELECT id, path, camera, frame, identity{names} "
                                   f"FROM images WHERE id IN ({marks})", chunk):
                rows[row[0]] = row
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KeyError(f"image ids not in the index: {missing[:10]}")
        seen = self.sightings(ids)
        return [_entry(rows[i], cols, self.trained_tasks, seen.get(i)) for i in ids]

    def sightings(self, ids: Sequence[int]) -> dict[int, Sighting]:
        """id -> footage :class:`~attreid.search.sightings.Sighting` of those ``ids`` with one."""
        with self._lock:
            return read_sightings(self._db, ids)

    def track(self, image_id: int) -> list[int]:
        """Ids of the crops of ``image_id``'s track, in time order ([] unless from footage)."""
        with self._lock:
            return track_ids(self._db, image_id)

    def ingested(self) -> dict[str, dict[str, Any]]:
        """key -> summary of each footage source in the index (:mod:`attreid.search.sightings`)."""
        with self._lock:
            return ingested(self._db)

    def vector(self, image_id: int) -> np.ndarray:
        """The stored (prepared) vector of one image, shape (D,)."""
        if not 0 <= image_id < len(self):
            raise KeyError(f"image id {image_id} not in the index (0..{len(self) - 1})")
        return self.vectors.reconstruct(int(image_id))

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """Stored (prepared) vectors of ``ids``, (len(ids), D), in that order: one batched
        read (the gallery interface's bulk fetch; on a server engine one round trip per
        thousand ids instead of one per id).

        Raises:
            KeyError: an id outside 0 .. N-1."""
        wanted = np.asarray(list(ids), dtype=np.int64).reshape(-1)
        bad = wanted[(wanted < 0) | (wanted >= len(self))]
        if len(bad):
            raise KeyError(f"image id(s) not in the index (0..{len(self) - 1}): "
                           f"{bad[:10].tolist()}")
        if not len(wanted):
            return np.zeros((0, int(self.vectors.d)), dtype=np.float32)
        return self.vectors.reconstruct_batch(wanted)

    def cameras(self) -> list[int]:
        """Cameras present in the index, sorted."""
        return [r[0] for r in self._query(
            "SELECT DISTINCT camera FROM images WHERE camera IS NOT NULL ORDER BY camera")]

    def committed(self) -> tuple[int, str]:
        """``(generation, vectors file name)`` as ``meta.sqlite`` holds them now (one read-only
        query): unlike :attr:`info` it shows another process's add since :meth:`open`, so a
        reader knows to reopen. (A rebuilt folder is another file: compare its identity.)"""
        rows = dict(self._query(
            "SELECT key, value FROM info WHERE key IN ('generation', 'vectors')"))
        return int(json.loads(rows.get("generation", "0"))), str(json.loads(rows["vectors"]))

    def ids(self, where: RowFilter | None = None) -> np.ndarray:
        """Ids of the committed rows ``where`` lets through, ascending (int64)."""
        sql, params = visible(where, len(self)).sql()
        rows = self._query(f"SELECT id FROM images WHERE {sql} ORDER BY id", params)
        return np.array([r[0] for r in rows], dtype=np.int64)

    def count(self, where: RowFilter | None = None) -> int:
        """Committed rows ``where`` lets through."""
        sql, params = visible(where, len(self)).sql()
        return int(self._query(f"SELECT COUNT(*) FROM images WHERE {sql}", params)[0][0])

    def products(self, where: RowFilter | None, columns: Sequence[str], k: int | None = None,
                 offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, product of the probability columns)`` of the rows ``where`` lets through:
        all in id order (``k`` None), or the ``k`` best from rank ``offset`` (ties: lower id).
        ``columns``: names of :func:`~attreid.search.metadata.probability_columns`."""
        known = {c for _, _, c in probability_columns()}
        if not columns or not set(columns) <= known:
            raise ValueError(f"columns {list(columns)}: expected probability columns")
        sql, params = visible(where, len(self)).sql()
        query = f"SELECT id, {' * '.join(columns)} AS score FROM images WHERE {sql} ORDER BY "
        if k is None:
            rows = self._query(query + "id", params)
        else:
            rows = self._query(query + f"score DESC, id LIMIT {int(k)} OFFSET {int(offset)}",
                               params)
        return (np.array([r[0] for r in rows], np.int64),
                np.array([r[1] for r in rows], np.float64))

    def column(self, name: str) -> np.ndarray:
        """Column ``name`` (:func:`~attreid.search.filters.check_column`) of the committed
        rows in id order, (N,) float64; NaN where a camera or frame is unknown."""
        rows = self._query(f"SELECT {check_column(name)} FROM images WHERE id < ? ORDER BY id",
                           [len(self)])
        return np.array([r[0] for r in rows], dtype=np.float64)

    def frame_range(self) -> tuple[int, int] | None:
        """``(first, last)`` frame number of the committed rows; None when no name gave one."""
        low, high = self._query("SELECT MIN(frame), MAX(frame) FROM images WHERE frame IS NOT "
                                "NULL AND id < ?", [len(self)])[0]
        return None if low is None else (int(low), int(high))

    def vector_block(self, start: int, count: int) -> np.ndarray:
        """Stored (prepared) vectors of ids ``start`` .. ``start + count - 1``, (count, D)."""
        return self.vectors.reconstruct_n(int(start), int(count))

    @property
    def location(self) -> str:
        return str(self.root)

    def find(self, queries: np.ndarray, k: int, where: RowFilter | None = None) -> Found:
        """:meth:`search` under a :class:`~attreid.search.filters.RowFilter` (the gallery
        interface, :mod:`attreid.search.gallery`): how many the filter allowed, and whether
        the ranking was exact."""
        allowed = None if where is None or not where.filters else self.ids(where)
        n = len(self) if allowed is None else len(allowed)
        distances, ids = self.search(np.asarray(queries), k, allowed)
        exact = self.info["kind"] == "flat" or (allowed is not None and n <= EXACT_ROWS)
        return Found(distances, ids, n, exact)

    def add(self, paths: Sequence[Path | str], embeddings: np.ndarray,
            probabilities: dict[str, np.ndarray]) -> int:
        """:meth:`append_arrays` (the gallery interface's add)."""
        return self.append_arrays(paths, embeddings, probabilities)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               nprobe: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Nearest ``k`` gallery vectors of each query row.

        Args:
            queries: (Q, D) embeddings (not yet prepared).
            allowed: only these ids may be returned (``None``: all).
            nprobe: IVF lists to visit (default: the index's setting).

        Returns:
            distances (Q, k') float32 and ids (Q, k') int64, nearest first; k' = min(k, number
            of allowed images). Euclidean or cosine distance as in training. An IVF search
            allowing at most :data:`EXACT_ROWS` ids is exact over them; one allowing a
            fraction f of the rows visits nprobe / f lists (up to all: the allowed rows it
            ranks stay as many as an unfiltered search ranks; at f = 8.75 % of 10^6 crops
            recall@10 was 0.54 with nprobe lists, benchmarks/RESULTS.md); one that comes back
            short of k' is repeated with twice the lists, up to every list, so it returns k'
            whenever k' exist; a slot it cannot fill has id -1 (:func:`unreached`).
        """
        faiss = _faiss()
        total = len(self) if allowed is None else len(allowed)
        k = min(int(k), total)
        q = prepare_vectors(queries, self.metric)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        selector = None if allowed is None else faiss.IDSelectorBatch(
            np.ascontiguousarray(allowed, dtype=np.int64))
        if self.info["kind"] == "ivf" and allowed is not None and len(allowed) <= EXACT_ROWS:
            return exact_search(self.vectors, q, k, allowed, self.metric)  # few: exactly
        if self.info["kind"] == "ivf":
            probe = int(nprobe or self.info["nprobe"])
            if allowed is not None:  # as many allowed rows visited as without the filter
                probe = -(-probe * len(self) // max(len(allowed), 1))
            scores, ids = self._search_ivf(q, k, selector, probe)
        else:
            scores, ids = self.vectors.search(q, k, params=faiss.SearchParameters(sel=selector))
        return faiss_to_distance(scores, self.metric), ids

    def _search_ivf(self, q: np.ndarray, k: int, selector: Any, nprobe: int
                    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS scores and ids (Q, k) of an IVF search, probing twice as many lists while a
        row comes back short of ``k``, up to all ``nlist`` lists (a filtered search of a
        camera whose crops lie in other lists than the query's used to return 10 of 50)."""
        faiss = _faiss()
        nlist = int(faiss.extract_index_ivf(self.vectors).nlist)
        nprobe = max(1, min(nprobe, nlist))
        while True:
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            scores, ids = self.vectors.search(q, k, params=params)
            if nprobe >= nlist or bool((ids >= 0).all()):
                return scores, ids
            nprobe = min(2 * nprobe, nlist)

    # ---- writing -------------------------------------------------------------------------

    def indexed_paths(self) -> set[str]:
        """The exact paths of every indexed crop."""
        return {_from_sql(r[0]) for r in self._query("SELECT path FROM images")}

    def append_store(self, store: FeatureStore,
                     on_wait: Callable[[str], None] | None = None) -> int:
        """Add the crops of a feature store (paths, embeddings, probabilities, as made by
        :func:`embed_files_to_store`) atomically (see the module docstring),
        :data:`WRITE_CHUNK` rows at a time, skipping crops already indexed.

        Holds the index's writer lock throughout (waiting for another writer first;
        ``on_wait`` gets one message about it) and re-reads the index from disk under it, so
        the crops land after those another process added meanwhile, never over them.

        Returns:
            the number of crops added.

        Raises:
            GalleryIndexError: the store is of another checkpoint or dimension (the index may
                have been rebuilt meanwhile), or the database refused the rows;
                :class:`~attreid.search.storage.IndexDiskFullError` when the disk is full.
                The index is then unchanged.
        """
        source = _store_source(store)
        with writer_lock(self.root, on_wait):
            self._reload()
            self._check_store(store)
            known = self.indexed_paths()
            source = _without(source, store, known)
            if source.count:
                needed = space_needed(source.count, len(self) + source.count, source.dim)
                with disk_full(self.root, needed, "the index is unchanged"):
                    self._append(source)
        return source.count

    def append_arrays(self, paths: Sequence[Path | str], embeddings: np.ndarray,
                      probabilities: dict[str, np.ndarray],
                      on_rows: RowsHook | None = None,
                      on_wait: Callable[[str], None] | None = None) -> int:
        """Add N crops already embedded (``paths``, none indexed yet; ``embeddings`` (N, D);
        ``probabilities`` task -> (N, C)) atomically under the writer lock, as
        :meth:`append_store`; returns N. ``on_rows(db, first_id)`` runs inside the transaction
        (e.g. to insert rows of other tables with the same ids) and returns more ``info``
        entries (or ``None``); an exception from it cancels the add.

        Raises:
            GalleryIndexError: a path already indexed, a dimension mismatch; IndexDiskFullError.
        """
        source = _array_source(paths, embeddings, probabilities)
        with writer_lock(self.root, on_wait):
            self._reload()
            if source.dim != self.info["dim"]:
                raise GalleryIndexError(f"embeddings of dimension {source.dim}, the index "
                                        f"{self.root} holds {self.info['dim']}")
            known = self.indexed_paths()
            again = [str(p) for p in paths if str(p) in known]
            if again:
                raise GalleryIndexError(f"{self.root}: {len(again)} crop(s) already indexed "
                                        f"(e.g. {again[0]}); nothing added")
            if source.count:
                needed = space_needed(source.count, len(self) + source.count, source.dim)
                with disk_full(self.root, needed, "the index is unchanged"):
                    self._append(source, on_rows)
        return source.count

    def _reload(self) -> None:
        """Read the index's current state from disk (under the writer lock): another process
        may have added crops, or rebuilt the folder, since this object was opened."""
        db = connect(self.root / DATABASE)
        try:
            info, vectors = read_state(self.root, db)
        except BaseException:
            db.close()
            raise
        with self._lock:
            old, self._db = self._db, db
            self.vectors, self.info = vectors, info
            self.trained_tasks = trained_tasks(info, self.root / DATABASE)
        old.close()

    def _check_store(self, store: FeatureStore) -> None:
        digest = store.info.get("checkpoint_sha256")
        if digest is not None and digest != self.info["checkpoint_sha256"]:
            raise GalleryIndexError(f"{self.root}: the index was rebuilt with another "
                                    "checkpoint while the crops were embedded; nothing added")
        if store.dim != self.info["dim"]:
            raise GalleryIndexError(f"{store.root}: embeddings of dimension {store.dim}, the "
                                    f"index {self.root} holds {self.info['dim']}")

    def _append(self, source: "_Source", on_rows: RowsHook | None = None) -> None:
        """The next generation: its vectors file, then the rows and the switch to it in one
        SQLite transaction (so readers wait for SQLite only while rows are committed)."""
        faiss = _faiss()
        generation = int(self.info["generation"]) + 1
        name = f"vectors-{generation}.faiss"
        vectors = faiss.clone_index(self.vectors)
        old = self.info["vectors"]
        for _, embeddings, _ in source.chunks():
            vectors.add(prepare_vectors(embeddings, self.metric))
        try:
            write_vectors(vectors, self.root / name)
            with self._lock, self._db:  # one transaction: the rows and the switch
                first = start = len(self)
                for paths, _, probabilities in source.chunks():
                    _insert(self._db, _rows(paths, probabilities, start))
                    start += len(paths)
                extra = (on_rows(self._db, first) if on_rows else None) or {}
                _set_info(self._db, {**extra, "vectors": name, "generation": generation})
        except BaseException as exc:  # the transaction is rolled back; drop the new file
            self._drop_unless_committed(name)
            if isinstance(exc, sqlite3.Error) and "full" not in str(exc):
                raise GalleryIndexError(f"{self.root / DATABASE}: cannot add rows ({exc}); "
                                        "the index is unchanged") from exc
            raise
        if self.info["kind"] == "ivf":
            vectors.make_direct_map()
        self.vectors = vectors
        self.info.update(**extra, vectors=name, generation=generation)
        try:
            (self.root / old).unlink(missing_ok=True)
        except OSError:  # a stray, removed at a later open
            pass

    def _drop_unless_committed(self, name: str) -> None:
        """Remove the vectors file ``name`` of a failed add, unless the database names it
        (never delete a committed generation)."""
        try:
            self._db.rollback()
            current = read_info(self._db, self.root / DATABASE)[0].get("vectors")
        except (sqlite3.Error, GalleryIndexError):
            return  # cannot tell: leave it, a later open removes it if it is a stray
        if current != name:
            (self.root / name).unlink(missing_ok=True)


def unreached(ids: np.ndarray) -> int:
    """Slots of a :meth:`GalleryIndex.search` result (Q, k') it could not fill (id -1): 0 unless
    an allowed id is not in the index (every IVF list is probed before a slot stays empty)."""
    return int((np.asarray(ids) < 0).sum())
