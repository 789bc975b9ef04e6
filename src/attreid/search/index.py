"""A searchable gallery: FAISS vectors + SQLite metadata in one folder.

Layout of an index folder::

    INDEX/
      meta.sqlite        # table ``info`` (key -> JSON value) and table ``images``
      vectors-<N>.faiss  # the FAISS index named by info["vectors"]; N = its generation

Row ``id`` of ``images`` is the FAISS id of its vector (ids are positions in add order, so
no id map is needed). Besides path, name, camera, frame and identity (parsed from Market-style
names ``PPPP_cCsS_FFFFFF_BB.jpg`` when the name carries them), each row holds the predicted
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

Updates are atomic: :meth:`GalleryIndex.add` writes the next generation's vectors file first,
then inserts the rows and switches ``info["vectors"]`` in one SQLite transaction, then deletes
the previous file. A crash leaves the old index or the new one, never a mix; a stray file of an
unfinished add is removed at the next open. A new index is built in a temporary folder and
renamed into place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from attreid.data.io import IMAGE_SUFFIXES, read_image
from attreid.data.records import DataError
from attreid.errors import AttreidError
from attreid.inference.features import (
    DEFAULT_SHARD_SIZE,
    EMBEDDINGS,
    PROBABILITIES,
    FeatureStore,
    FeatureStoreError,
    ImageBatch,
    extract_to_store,
)
from attreid.schema import TASK_NAMES, TASKS, trained_tasks_of
from attreid.utils.files import file_sha256, printable_name

FORMAT_VERSION = 1
DATABASE = "meta.sqlite"
INDEX_KINDS = ("flat", "ivf")
_MARKET_NAME = re.compile(r"^(-1|\d+)_c(\d+)s(\d+)_(\d+)_(\d+)\.")
_CAMERA_NAME = re.compile(r"(?:^|[_-])c(?:am)?(\d+)(?:s\d+)?[_-](?:f(?:rame)?)?(\d+)")
IVF_SAMPLE_PER_LIST = 256
"""The IVF quantizer trains on a seeded random sample of at most this many vectors per list,"""
IVF_SAMPLE_MAX = 65_536
"""and of at most this many in all (but never fewer than :data:`IVF_SAMPLE_MIN_PER_LIST` per
list), so that training memory and time stay bounded however large the gallery."""
IVF_SAMPLE_MIN_PER_LIST = 40
WRITE_CHUNK = 16_384
"""Vectors added to FAISS, and rows inserted into SQLite, at a time when writing an index."""

Progress = Callable[[int, int], None]
"""Callback ``(done, total)`` for long work."""


class GalleryIndexError(AttreidError, RuntimeError):
    """An index folder is missing, corrupt or does not belong to the given checkpoint."""


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


def list_gallery(folder: Path | str) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted, absolute).

    Raises:
        DataError: the folder is missing, not a folder, or holds no image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder not found" if not folder.exists()
                        else f"{folder}: expected a folder of images, found a file")
    paths = sorted(p.resolve() for p in folder.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return paths


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


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:  # optional dependency: the search extra
        raise ImportError("gallery search needs faiss: pip install 'attreid[search]' "
                          "(or pip install faiss-cpu)") from exc
    return faiss


def _new_faiss_index(dim: int, metric: str, kind: str, nlist: int) -> Any:
    faiss = _faiss()
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "cosine" else faiss.METRIC_L2
    flat = faiss.IndexFlatIP(dim) if metric == "cosine" else faiss.IndexFlatL2(dim)
    if kind == "flat":
        return flat
    return faiss.IndexIVFFlat(flat, dim, nlist, faiss_metric)


def prepare_vectors(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float32, C-contiguous; unit length for the cosine metric (FAISS inner product)."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


def faiss_to_distance(scores: np.ndarray, metric: str) -> np.ndarray:
    """FAISS scores -> attreid distances (Euclidean: sqrt of squared L2; cosine: 1 - cos)."""
    if metric == "cosine":
        return 1.0 - scores
    return np.sqrt(np.maximum(scores, 0.0))


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

    def select(self, where: str, params: Sequence[Any], order: str = "id",
               limit: int | None = None, score: str = "1.0") -> list[tuple[int, float]]:
        """``(id, score)`` of rows matching a SQL condition built by the query layer."""
        sql = f"SELECT id, {score} AS score FROM images WHERE {where} ORDER BY {order}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [(int(i), float(s)) for i, s in self._query(sql, params)]

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


def _entry(row: tuple, cols: list[tuple[str, int, str]], trained: tuple[str, ...]) -> Entry:
    probs: dict[str, list[float]] = {name: [] for name in trained}
    for (task, _, _), value in zip(cols, row[5:]):
        probs[task].append(float(value))
    return Entry(id=int(row[0]), path=_from_sql(row[1]), camera=row[2], frame=row[3],
                 identity=row[4], probabilities=probs, trained_tasks=trained)


def _trained_tasks(info: dict[str, Any], where: Path) -> tuple[str, ...]:
    """``info["trained_tasks"]`` in the order of ``TASK_NAMES``; all tasks when absent."""
    try:
        return trained_tasks_of(info.get("trained_tasks"))
    except ValueError as exc:
        raise GalleryIndexError(f"{where}: damaged index info ({exc}); rebuild it with "
                                "`attreid index build`") from None


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


# --------------------------------------------------------------------------------------------
# Embedding a folder
# --------------------------------------------------------------------------------------------


@dataclass
class Embedded:
    """Crops that decoded, their outputs, and the files that did not decode."""

    paths: list[Path]
    embeddings: np.ndarray  # (N, D)
    probabilities: dict[str, np.ndarray]  # task -> (N, C)
    skipped: list[str]  # "path: reason"


def _decoded(paths: Sequence[Path], skipped: list[str]) -> Iterator[tuple[Path, Any]]:
    for path in paths:
        try:
            yield path, read_image(path)
        except DataError as exc:
            skipped.append(str(exc))


def embed_files(predictor: Any, paths: Sequence[Path], batch_size: int = 64,
                progress: Progress | None = None) -> Embedded:
    """Embed ``paths`` with a :class:`~attreid.Predictor` in batches; undecodable files are
    skipped (and listed), never fatal."""
    skipped: list[str] = []
    kept: list[Path] = []
    embeddings, probabilities = [], {t.name: [] for t in TASKS}
    batch: list[tuple[Path, Any]] = []

    def flush() -> None:
        result = predictor.predict([img for _, img in batch])
        kept.extend(p for p, _ in batch)
        embeddings.append(result.embeddings)
        for task in TASKS:
            probabilities[task.name].append(result.probabilities[task.name])
        batch.clear()

    for item in _decoded(paths, skipped):
        batch.append(item)
        if len(batch) == batch_size:
            flush()
        if progress:
            progress(len(kept) + len(batch) + len(skipped), len(paths))
    if batch:
        flush()
    if progress:
        progress(len(paths), len(paths))
    dim = int(predictor.embedding_dim)
    return Embedded(
        paths=kept,
        embeddings=np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32),
        probabilities={k: (np.concatenate(v) if v else np.zeros((0, len(t.classes))))
                       for (k, v), t in zip(probabilities.items(), TASKS)},
        skipped=skipped,
    )


def _warn_skipped(skipped: list[str]) -> None:
    if skipped:
        shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more" if len(skipped) > 5
                                          else "")
        warnings.warn(f"skipped {len(skipped)} undecodable image(s): "
                      f"{printable_name(shown)}", stacklevel=3)


def ivf_sample_size(count: int, nlist: int) -> int:
    """Training vectors of an IVF index with ``nlist`` lists over ``count`` vectors:
    ``min(count, max(40 nlist, min(256 nlist, 65,536)))``."""
    cap = max(IVF_SAMPLE_MIN_PER_LIST * nlist, min(IVF_SAMPLE_PER_LIST * nlist, IVF_SAMPLE_MAX))
    return min(count, cap)


def _train_ivf(vectors: Any, source: "_Source", nlist: int, metric: str, seed: int = 0) -> None:
    """Train the IVF quantizer on a seeded sample of the source (see :func:`ivf_sample_size`)."""
    if source.count < nlist:
        raise GalleryIndexError(f"IVF with {nlist} lists needs at least {nlist} images to "
                                f"train on, the gallery has {source.count}; use a smaller "
                                "--nlist or the exact (flat) index")
    size = ivf_sample_size(source.count, nlist)
    rows = np.arange(size) if size == source.count else \
        np.random.default_rng(seed).choice(source.count, size, replace=False)
    vectors.train(prepare_vectors(source.take(rows), metric))  # (size, D)


def _check_target(out: Path, kind: str, overwrite: bool) -> None:
    if kind not in INDEX_KINDS:
        raise GalleryIndexError(f"index kind {kind!r}: expected one of {INDEX_KINDS}")
    if out.exists() and not overwrite:
        raise GalleryIndexError(f"{out}: already exists; pass overwrite (--overwrite) to "
                                "replace it or `attreid index add` to extend it")


def build_index(predictor: Any, images: Path | str, out: Path | str, kind: str = "flat",
                nlist: int = 0, nprobe: int = 16, batch_size: int = 64, overwrite: bool = False,
                progress: Progress | None = None, features: Path | str | None = None,
                shard_size: int = DEFAULT_SHARD_SIZE) -> GalleryIndex:
    """Embed every crop under ``images`` and write a new index folder ``out``.

    The crops are embedded batch by batch into a feature store (:mod:`attreid.inference.features`),
    then the index is written from it chunk by chunk: memory holds one batch, one shard and
    the FAISS vectors, not every embedding and probability twice over.

    Args:
        predictor: an :class:`~attreid.Predictor` (its checkpoint and its
            ``trained_tasks`` are recorded).
        kind: ``"flat"`` (exact search) or ``"ivf"`` (inverted lists; for large galleries;
            trained on a sample, see :func:`ivf_sample_size`).
        nlist: IVF lists (0: about 4 * sqrt(N)); nprobe: lists visited per query.
        overwrite: replace an existing ``out``.
        features: keep the feature store in this new folder (default: a temporary one,
            removed); shard_size: its rows per shard.

    Raises:
        GalleryIndexError: ``out`` exists (without ``overwrite``), bad IVF settings, or no
            image decoded.
        DataError: the image folder is missing or empty.
    """
    out = Path(out)
    _check_target(out, kind, overwrite)  # before the embedding, which takes long
    paths = list_gallery(images)
    out.parent.mkdir(parents=True, exist_ok=True)
    store_dir = Path(features) if features is not None else Path(
        tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.features.", suffix=".tmp"))
    try:
        store, skipped = embed_files_to_store(predictor, paths, store_dir, batch_size,
                                              shard_size, progress,
                                              overwrite=features is None)
        _warn_skipped(skipped)
        if not len(store):
            raise GalleryIndexError(f"{images}: none of the {len(paths)} images decoded")
        return write_index_from_store(
            out, store, checkpoint=Path(predictor.checkpoint), metric=predictor.distance,
            checkpoint_sha256=predictor.checkpoint_sha256, kind=kind, nlist=nlist,
            nprobe=nprobe, overwrite=overwrite,
            extra={"flip": bool(predictor.flip), "images_root": str(Path(images).resolve())},
            trained_tasks=getattr(predictor, "trained_tasks", TASK_NAMES))
    finally:
        if features is None:
            shutil.rmtree(store_dir, ignore_errors=True)


def embed_files_to_store(predictor: Any, paths: Sequence[Path], out: Path | str,
                         batch_size: int = 64, shard_size: int = DEFAULT_SHARD_SIZE,
                         progress: Progress | None = None,
                         overwrite: bool = False) -> tuple[FeatureStore, list[str]]:
    """:func:`embed_files`, streamed to a feature store ``out`` (see :mod:`attreid.inference.features`)
    instead of held in memory: embeddings, probabilities and paths of the crops that decoded.

    Returns:
        (the store, skipped undecodable files as "path: reason").
    """
    skipped: list[str] = []

    def batches() -> Iterator[ImageBatch]:
        batch: list[tuple[Path, Any]] = []
        for item in _decoded(paths, skipped):
            batch.append(item)
            if len(batch) == batch_size:
                yield ImageBatch([img for _, img in batch], [str(p) for p, _ in batch])
                batch = []
        if batch:
            yield ImageBatch([img for _, img in batch], [str(p) for p, _ in batch])

    def report(done: int) -> None:
        if progress:
            progress(done + len(skipped), len(paths))

    store = extract_to_store(predictor, batches(), out, shard_size, overwrite=overwrite,
                             info={"flip": bool(predictor.flip),
                                   "checkpoint_sha256": predictor.checkpoint_sha256},
                             progress=report)
    if progress:
        progress(len(paths), len(paths))
    return store, skipped


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


def write_index(out: Path | str, paths: Sequence[Path], embeddings: np.ndarray,
                probabilities: dict[str, np.ndarray], checkpoint: Path, metric: str = "euclidean",
                kind: str = "flat", nlist: int = 0, nprobe: int = 16, overwrite: bool = False,
                extra: dict[str, Any] | None = None,
                checkpoint_sha256: str | None = None,
                trained_tasks: Sequence[str] | None = None) -> GalleryIndex:
    """Write an index folder from embeddings already computed (by ``checkpoint``).

    Args:
        paths: N crop files; embeddings: (N, D); probabilities: task -> (N, C).
        metric: ``"euclidean"`` or ``"cosine"`` (the checkpoint's training distance).
        kind, nlist, nprobe, overwrite: as in :func:`build_index`.
        extra: more ``info`` entries (flip, images_root).
        checkpoint_sha256: the checkpoint's sha256 (default: hash ``checkpoint``; an ONNX
            export gives its source checkpoint's).
        trained_tasks: the tasks the model was trained on (``Predictor.trained_tasks``;
            ``None``: all); only those can be searched by and are described.
    """
    return _write_index(out, _array_source(paths, embeddings, probabilities), checkpoint,
                        metric, kind, nlist, nprobe, overwrite, extra, checkpoint_sha256,
                        trained_tasks)


def write_index_from_store(out: Path | str, store: FeatureStore, checkpoint: Path,
                           metric: str = "euclidean", kind: str = "flat", nlist: int = 0,
                           nprobe: int = 16, overwrite: bool = False,
                           extra: dict[str, Any] | None = None,
                           checkpoint_sha256: str | None = None,
                           trained_tasks: Sequence[str] | None = None) -> GalleryIndex:
    """:func:`write_index` from a feature store with paths and probabilities (as made by
    :func:`embed_files_to_store`), read chunk by chunk: vectors are added to FAISS and rows
    inserted into SQLite :data:`WRITE_CHUNK` at a time, an IVF quantizer trains on a sample
    (:func:`ivf_sample_size`). Memory: the FAISS vectors plus a chunk (plus the sample).
    Gives the same index as :func:`write_index` on the store's arrays.
    """
    return _write_index(out, _store_source(store), checkpoint, metric, kind, nlist, nprobe,
                        overwrite, extra, checkpoint_sha256, trained_tasks)


def _write_index(out: Path | str, source: _Source, checkpoint: Path, metric: str, kind: str,
                 nlist: int, nprobe: int, overwrite: bool, extra: dict[str, Any] | None,
                 checkpoint_sha256: str | None,
                 trained_tasks: Sequence[str] | None = None) -> GalleryIndex:
    out = Path(out)
    _check_target(out, kind, overwrite)
    if trained_tasks is not None:
        extra = {**(extra or {}), "trained_tasks": list(trained_tasks_of(list(trained_tasks)))}
    nlist = nlist or max(1, int(4 * np.sqrt(source.count)))
    info = {"format": FORMAT_VERSION, "checkpoint": str(Path(checkpoint).resolve()),
            "checkpoint_sha256": checkpoint_sha256 or file_sha256(Path(checkpoint)),
            "metric": metric,
            "dim": int(source.dim), "kind": kind, "nlist": nlist if kind == "ivf" else 0,
            "nprobe": nprobe, "flip": False, "images_root": None,
            "vectors": "vectors-0.faiss", "generation": 0, **(extra or {})}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        vectors = _new_faiss_index(source.dim, metric, kind, nlist)
        if kind == "ivf":
            _train_ivf(vectors, source, nlist, metric)
        with sqlite3.connect(tmp / DATABASE) as db:
            _create_schema(db)
            start = 0
            for paths, embeddings, probabilities in source.chunks():
                vectors.add(prepare_vectors(embeddings, metric))
                _insert(db, _rows(paths, probabilities, start))
                start += len(paths)
            _set_info(db, info)
        db.close()
        _write_vectors(vectors, tmp / info["vectors"])
        del vectors  # GalleryIndex.open reads them back
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return GalleryIndex.open(out)


def add_images(index: GalleryIndex, predictor: Any, images: Path | str, batch_size: int = 64,
               progress: Progress | None = None) -> tuple[int, int, list[str]]:
    """Embed the crops under ``images`` not yet in ``index`` and append them (no rebuild).

    Returns:
        (added, already indexed, skipped undecodable files).

    Raises:
        GalleryIndexError: ``predictor``'s checkpoint did not make the index.
    """
    index.check_checkpoint(predictor.checkpoint, predictor.checkpoint_sha256)
    known = index.indexed_paths()
    paths = list_gallery(images)
    new = [p for p in paths if str(p) not in known]
    if not new:
        return 0, len(paths), []
    scratch = Path(tempfile.mkdtemp(dir=index.root.parent, prefix=f".{index.root.name}.add.",
                                    suffix=".tmp"))
    try:  # streamed through a scratch feature store: memory bounded whatever the number of crops
        store, skipped = embed_files_to_store(predictor, new, scratch, batch_size,
                                              progress=progress, overwrite=True)
        _warn_skipped(skipped)
        if len(store):
            index.append_store(store)
        return len(store), len(paths) - len(new), skipped
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
