"""A searchable gallery: FAISS vectors + SQLite metadata in one folder, opened for search.

Layout of an index folder::

    INDEX/
      meta.sqlite        # table ``info`` (key -> JSON value) and table ``images``
      vectors-<N>.faiss  # the FAISS index named by info["vectors"]; N = its generation

Row ``id`` of ``images`` is the FAISS id of its vector (ids are positions in add order, so
no id map is needed). The rows are described in :mod:`attreid.search.metadata`, the FAISS
side in :mod:`attreid.search.vectors`; a new index is written (and crops are embedded and
added) by :mod:`attreid.search.build`. The rows to index (``_Source``: from arrays or from a
feature store, read :data:`WRITE_CHUNK` at a time) live here, as both
:meth:`GalleryIndex.append_store` and that writer take them.

Updates are atomic: :meth:`GalleryIndex.append_store` writes the next generation's vectors
file first, then inserts the rows and switches ``info["vectors"]`` in one SQLite transaction,
then deletes the previous file. A crash leaves the old index or the new one, never a mix; a
stray file of an unfinished add is removed at the next open. A new index is built in a
temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from attreid.errors import AttreidError
from attreid.inference.features import EMBEDDINGS, PROBABILITIES, FeatureStore, FeatureStoreError
from attreid.schema import trained_tasks_of
from attreid.search.metadata import (
    Entry,
    _entry,
    _from_sql,
    _insert,
    _probability_rows,
    _rows,
    _set_info,
    probability_columns,
)
from attreid.search.vectors import _faiss, faiss_to_distance, prepare_vectors
from attreid.utils.files import file_sha256

FORMAT_VERSION = 1
DATABASE = "meta.sqlite"
WRITE_CHUNK = 16_384
"""Vectors added to FAISS, and rows inserted into SQLite, at a time when writing an index."""


class GalleryIndexError(AttreidError, RuntimeError):
    """An index folder is missing, corrupt or does not belong to the given checkpoint."""


class GalleryIndex:
    """An index folder opened for search (and for :meth:`add`).

    Thread-safe for concurrent searches: SQLite reads take a lock, FAISS searches are
    read-only.
    """

    def __init__(self, root: Path, db: sqlite3.Connection, vectors: Any,
                 info: dict[str, Any]) -> None:
        self.root = root
        self._db = db
        self._lock = threading.Lock()
        self.vectors = vectors
        self.info = info
        self.trained_tasks: tuple[str, ...] = _trained_tasks(info, root / DATABASE)

    # ---- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, root: Path | str) -> "GalleryIndex":
        """Open an index folder made by :func:`build_index`.

        Raises:
            GalleryIndexError: missing folder or files, unknown format, or vectors and
                metadata that disagree; the message names the file.
        """
        root = Path(root)
        db_path = root / DATABASE
        if not db_path.is_file():
            raise GalleryIndexError(f"{root}: not an attreid index ({DATABASE} not found); "
                                    "make one with `attreid index build`")
        try:
            db = sqlite3.connect(db_path, check_same_thread=False)
            info = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM info")}
            count = db.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        except (sqlite3.Error, json.JSONDecodeError) as exc:
            raise GalleryIndexError(f"{db_path}: corrupt index database ({exc})") from exc
        if info.get("format") != FORMAT_VERSION:
            raise GalleryIndexError(f"{db_path}: index format {info.get('format')!r}, "
                                    f"this attreid reads {FORMAT_VERSION}; rebuild the index")
        missing = [k for k in ("vectors", "dim", "metric", "kind") if k not in info]
        if missing:
            raise GalleryIndexError(f"{db_path}: damaged index, its info table lacks "
                                    f"{', '.join(missing)}; rebuild it with `attreid index build`")
        vectors = _read_vectors(root / info["vectors"], info)
        if vectors.ntotal != count:
            raise GalleryIndexError(f"{root}: {vectors.ntotal} vectors but {count} image rows; "
                                    "the index is damaged, rebuild it")
        _remove_strays(root, info["vectors"])
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
            return self._db.execute(sql, params).fetchall()

    def entries(self, ids: Sequence[int]) -> list[Entry]:
        """Rows of ``ids``, in that order.

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
        return [_entry(rows[i], cols, self.trained_tasks) for i in ids]

    def vector(self, image_id: int) -> np.ndarray:
        """The stored (prepared) vector of one image, shape (D,)."""
        if not 0 <= image_id < len(self):
            raise KeyError(f"image id {image_id} not in the index (0..{len(self) - 1})")
        return self.vectors.reconstruct(int(image_id))

    def cameras(self) -> list[int]:
        """Cameras present in the index, sorted."""
        return [r[0] for r in self._query(
            "SELECT DISTINCT camera FROM images WHERE camera IS NOT NULL ORDER BY camera")]

    def committed(self) -> tuple[int, str]:
        """``(generation, vectors file name)`` as ``meta.sqlite`` holds them now, read through
        this object's connection (read-only, one small query): unlike :attr:`info`, it shows
        an add committed by another process since :meth:`open`, so a reader can tell that it
        holds an older generation and reopen the folder. (A folder replaced by a rebuild is
        another file: this object still reads the old one; compare the file's identity.)"""
        rows = dict(self._query(
            "SELECT key, value FROM info WHERE key IN ('generation', 'vectors')"))
        return int(json.loads(rows.get("generation", "0"))), str(json.loads(rows["vectors"]))

    def select(self, where: str, params: Sequence[Any], order: str = "id",
               limit: int | None = None, score: str = "1.0", offset: int = 0
               ) -> list[tuple[int, float]]:
        """``(id, score)`` of rows matching a SQL condition built by the query layer, from
        row ``offset`` on."""
        sql = f"SELECT id, {score} AS score FROM images WHERE {where} ORDER BY {order}"
        if limit is not None or offset:
            sql += f" LIMIT {-1 if limit is None else int(limit)} OFFSET {int(offset)}"
        return [(int(i), float(s)) for i, s in self._query(sql, params)]

    def count(self, where: str, params: Sequence[Any]) -> int:
        """Rows matching a SQL condition built by the query layer."""
        return int(self._query(f"SELECT COUNT(*) FROM images WHERE {where}", params)[0][0])

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
            may find fewer than k' (its probed lists hold fewer): those slots have id -1.
        """
        faiss = _faiss()
        total = len(self) if allowed is None else len(allowed)
        k = min(int(k), total)
        q = prepare_vectors(queries, self.metric)
        if k <= 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        selector = None if allowed is None else faiss.IDSelectorBatch(
            np.ascontiguousarray(allowed, dtype=np.int64))
        if self.info["kind"] == "ivf":
            params = faiss.SearchParametersIVF(sel=selector,
                                               nprobe=int(nprobe or self.info["nprobe"]))
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, ids = self.vectors.search(q, k, params=params)
        return faiss_to_distance(scores, self.metric), ids

    # ---- writing -------------------------------------------------------------------------

    def indexed_paths(self) -> set[str]:
        """The exact paths of every indexed crop."""
        return {_from_sql(r[0]) for r in self._query("SELECT path FROM images")}

    def append_store(self, store: FeatureStore) -> None:
        """Add the crops of a feature store (paths, embeddings, probabilities, as made by
        :func:`embed_files_to_store`) atomically (see the module docstring),
        :data:`WRITE_CHUNK` rows at a time."""
        source = _store_source(store)
        faiss = _faiss()
        generation = int(self.info["generation"]) + 1
        name = f"vectors-{generation}.faiss"
        vectors = faiss.clone_index(self.vectors)
        old = self.info["vectors"]
        with self._lock:
            try:
                with self._db:  # one transaction: the rows and the switch to the new vectors
                    start = len(self)
                    for paths, embeddings, probabilities in source.chunks():
                        vectors.add(prepare_vectors(embeddings, self.metric))
                        _insert(self._db, _rows(paths, probabilities, start))
                        start += len(paths)
                    _write_vectors(vectors, self.root / name)
                    _set_info(self._db, {"vectors": name, "generation": generation})
            except BaseException as exc:  # the transaction is rolled back; drop the new file
                (self.root / name).unlink(missing_ok=True)
                if isinstance(exc, sqlite3.Error):
                    raise GalleryIndexError(f"{self.root / DATABASE}: cannot add rows ({exc}); "
                                            "the index is unchanged") from exc
                raise
        if self.info["kind"] == "ivf":
            vectors.make_direct_map()
        self.vectors = vectors
        self.info.update(vectors=name, generation=generation)
        (self.root / old).unlink(missing_ok=True)


def _trained_tasks(info: dict[str, Any], where: Path) -> tuple[str, ...]:
    """``info["trained_tasks"]`` in the order of ``TASK_NAMES``; all tasks when absent."""
    try:
        return trained_tasks_of(info.get("trained_tasks"))
    except ValueError as exc:
        raise GalleryIndexError(f"{where}: damaged index info ({exc}); rebuild it with "
                                "`attreid index build`") from None


def _read_vectors(path: Path, info: dict[str, Any]) -> Any:
    faiss = _faiss()
    if not path.is_file():
        raise GalleryIndexError(f"{path}: vectors file of the index not found; rebuild the index")
    try:
        vectors = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise GalleryIndexError(f"{path}: cannot read FAISS vectors ({exc})") from exc
    if vectors.d != info["dim"]:
        raise GalleryIndexError(f"{path}: vectors of dimension {vectors.d}, "
                                f"the index records {info['dim']}")
    if info["kind"] == "ivf":
        vectors.make_direct_map()  # for reconstruct(): search by an indexed image
    return vectors


def _write_vectors(vectors: Any, path: Path) -> None:
    faiss = _faiss()
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(vectors, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _remove_strays(root: Path, current: str) -> None:
    for path in root.glob("*vectors-*.faiss*"):
        if path.name != current:
            try:
                path.unlink()
            except OSError:  # read-only index folder: strays are harmless
                pass


@dataclass(frozen=True)
class _Source:
    """Rows to index: how many, their dimension, chunks of (paths, embeddings (b, D),
    probabilities (b, P)) in order, and a gather of embedding rows (K,) -> (K, D)."""

    count: int
    dim: int
    chunks: Callable[[], Iterator[tuple[Sequence[Any], np.ndarray, np.ndarray]]]
    take: Callable[[np.ndarray], np.ndarray]


def _array_source(paths: Sequence[Path], embeddings: np.ndarray,
                  probabilities: dict[str, np.ndarray]) -> _Source:
    x = np.asarray(embeddings)
    if x.ndim != 2 or len(x) != len(paths):
        raise GalleryIndexError(f"embeddings: expected ({len(paths)}, D) for {len(paths)} "
                                f"paths, got {x.shape}")
    probs = _probability_rows(probabilities)  # (N, P)

    def chunks() -> Iterator[tuple[Sequence[Any], np.ndarray, np.ndarray]]:
        for lo in range(0, len(x), WRITE_CHUNK):
            hi = lo + WRITE_CHUNK
            yield paths[lo:hi], x[lo:hi], probs[lo:hi]

    return _Source(len(x), x.shape[1], chunks, lambda rows: x[rows])


def _store_source(store: FeatureStore) -> _Source:
    if not store.has_paths or PROBABILITIES not in store.fields:
        raise FeatureStoreError(f"{store.root}: an index needs the paths and probabilities "
                                "of the crops; this store lacks them")

    def chunks() -> Iterator[tuple[Sequence[Any], np.ndarray, np.ndarray]]:
        for chunk in store.chunks([EMBEDDINGS, PROBABILITIES], WRITE_CHUNK, paths=True):
            yield (chunk.paths or [], np.array(chunk.arrays[EMBEDDINGS]),
                   np.array(chunk.arrays[PROBABILITIES]))

    return _Source(len(store), store.dim, chunks, lambda rows: store.take(EMBEDDINGS, rows))
