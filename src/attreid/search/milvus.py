"""A gallery in Milvus (:class:`MilvusGallery`): the same :class:`~attreid.search.gallery.Gallery`
calls as the FAISS + SQLite index folder, through ``pymilvus.MilvusClient(uri)``: a file path is
Milvus Lite (embedded, one process per file), ``http://host:19530`` a Milvus server or cluster.

Layout for a gallery ``NAME`` (collection names: letters, digits and ``_``)::

    NAME              alias -> the current generation's collection
    NAME__g<N>        rows: id (primary key, position in add order), vec, path, path_key,
                      camera, frame, identity (-1: none), one FLOAT per probability column
    NAME__g<N>_info   one row: the index's info as JSON, with "count" (committed rows)
    attreid__turns    the writers of every gallery there: bakery number, lease expiry

* **Adds are atomic.** New rows get ids from ``count`` on and become visible when the info row's
  ``count`` is replaced (one upsert); every read filters ``id < count``. Rows of an add killed
  before that are never seen and are deleted by the next writer.
* **A rebuild is a new generation**: ``NAME__g<N+1>`` is filled, then the alias moves to it;
  the previous generation stays readable (readers that opened it go on) until the next rebuild
  drops it.
* **One writer at a time**: a writer takes a number (Lamport's bakery) and writes only when no
  live writer holds a smaller one; others wait (``on_wait`` is told once). A lease of
  :data:`LEASE_S` seconds, renewed every third of it, frees the turn of a writer killed mid-add
  (writers' clocks must agree to well within a lease, as NTP keeps them). Milvus Lite lets one
  process open a file: a second process is refused with a message.

Source of the engine: Milvus (Wang et al., "Milvus: A Purpose-Built Vector Data Management
System", SIGMOD 2021); Milvus Lite and the server come from PyPI (``pymilvus``, ``milvus-lite``,
``milvus``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from attreid.search.columns import product
from attreid.search.filters import Found, RowFilter, check_column, visible
from attreid.search.gallery import check_rows
from attreid.search.index_state import FORMAT_VERSION, trained_tasks
from attreid.search.storage import GalleryIndexError
from attreid.search.milvus_collections import (
    INDEX_TYPES,
    IVF_NPROBE,
    READ,
    alias_target,
    check_name,
    connect,
    current,
    info_row,
    is_lite,
    ivf_lists,
    load,
    make_collections,
    path_key,
    prune,
    read_info,
    release_lite,
    search_params,
    writer_turn,
)
from attreid.search.metadata import Entry, parse_name, probability_columns
from attreid.search.sources import _array_source, _Source
from attreid.search.vectors import (
    EXACT_ROWS,
    exact_distances,
    faiss_to_distance,
    nearest,
    prepare_vectors,
)

INSERT_BATCH = 2_000
"""Rows per insert request."""
FETCH_BATCH = 1_000
"""Ids per fetch request."""
MAX_TOPK = 16_384
"""Milvus's largest ``limit`` of one search; deeper searches are exact."""
LEASE_S = 30.0
"""Seconds a writer's turn outlives its last renewal."""
_NONE = -(2 ** 63)
"""Camera, frame or identity unknown (Milvus has no null integers here): the least int64, not
-1, which is an identity (Market-1501's distractor crops, ``-1_c1s1_...``)."""


class MilvusGallery:
    """A gallery in one Milvus collection (see the module docstring). Open with :meth:`open`,
    make with :meth:`create`.

    Attributes:
        info: as the FAISS index's ``info`` (format, checkpoint, checkpoint_sha256, metric,
            dim, kind, trained_tasks) plus ``count`` and ``generation``.
    """

    scans_by_query = False  # a scan streams every row through the client: hold columns

    def __init__(self, client: Any, uri: str, name: str, collection: str,
                 info: dict[str, Any], lease_s: float = LEASE_S) -> None:
        self.client, self.uri, self.name = client, uri, name
        self.collection, self.info = collection, info
        self.location = f"{uri}#{name}"
        self.lease_s = lease_s
        self.trained_tasks: tuple[str, ...] = trained_tasks(info, self.location)  # type: ignore
        self._memo: dict[str, tuple[int, Any]] = {}

    # ---- opening and making ----------------------------------------------------------------

    @classmethod
    def open(cls, uri: str, name: str, client: Any = None,
             lease_s: float = LEASE_S) -> "MilvusGallery":
        """Open the gallery ``name`` at ``uri`` as its current generation.

        Raises:
            GalleryIndexError: no such gallery, or its info row is missing or of another format.
        """
        check_name(name)
        client = client or connect(uri)
        collection, info = current(client, uri, name)
        return cls(client, uri, name, collection, info, lease_s)

    @classmethod
    def create(cls, uri: str, name: str, source: _Source, info: dict[str, Any],
               kind: str = "flat", overwrite: bool = False, client: Any = None,
               lease_s: float = LEASE_S, on_wait: Callable[[str], None] | None = None,
               nlist: int = 0, nprobe: int = IVF_NPROBE) -> "MilvusGallery":
        """Write a new gallery (or, with ``overwrite``, the next generation of ``name``) from
        the embedded crops of ``source`` (:mod:`attreid.search.sources`: arrays or a feature
        store, read a chunk at a time). ``info`` as :func:`~attreid.search.build.write_index`
        records (checkpoint, sha256, metric, flip, trained_tasks...); ``kind``: ``flat``,
        ``hnsw`` or ``ivf`` (IVF_FLAT of ``nlist`` lists, 0: about 4 sqrt(N) as FAISS's
        rule, at most 65,536; ``nprobe`` of them visited per query).

        Raises:
            GalleryIndexError: ``name`` exists (without ``overwrite``), an unknown ``kind``.
        """
        check_name(name)
        if kind not in INDEX_TYPES:
            raise GalleryIndexError(f"kind {kind!r}: expected one of {', '.join(INDEX_TYPES)}")
        client = client or connect(uri, create=True)
        with writer_turn(client, name, lease_s, on_wait):
            old = alias_target(client, name)
            if old is not None and not overwrite:
                raise GalleryIndexError(f"{uri}#{name}: the gallery exists; pass overwrite "
                                        "(--overwrite) to replace it")
            if old is not None:
                load(client, f"{old}_info")  # another process made it: Milvus holds it released
            generation = 0 if old is None else int(read_info(client, old)["generation"]) + 1
            data = f"{name}__g{generation}"
            prune(client, name, keep={old})  # a killed build's leftovers
            ivf = {"nlist": nlist or ivf_lists(source.count), "nprobe": int(nprobe)}
            make_collections(client, data, source.dim, str(info.get("metric", "euclidean")),
                             kind, ivf["nlist"])
            full = {"format": FORMAT_VERSION, **info, "dim": source.dim, "kind": kind,
                    "generation": generation, "count": 0, **(ivf if kind == "ivf" else {})}
            gallery = cls(client, uri, name, data, full, lease_s)
            gallery._insert(source, start=0, renew=None)
            client.flush(data)
            gallery._commit(source.count)
            (client.alter_alias if old else client.create_alias)(data, name)
            prune(client, name, keep={old, data})  # readers of ``old`` go on until the next
        return gallery

    def close(self) -> None:
        """Close the client; for Milvus Lite also stop this process's server of the file, so
        that another process may open it (other handles of this process on the file close)."""
        self.client.close()
        release_lite(self.uri)

    def reload(self) -> None:
        """Read the current generation again (another writer's adds since :meth:`open`)."""
        self.collection, self.info = current(self.client, self.uri, self.name)

    def committed(self) -> tuple[int, int]:
        """``(generation, committed rows)`` as Milvus holds them now."""
        collection, info = current(self.client, self.uri, self.name)
        return int(info["generation"]), int(info["count"])

    @property
    def root(self) -> Path:
        """Where the gallery's files beside it go (its investigators' cases,
        ``<root>.cases.sqlite``): the Lite file itself, or ``NAME`` in the working directory
        for a server."""
        return Path(self.uri) if is_lite(self.uri) else Path(self.name)

    # ---- reading ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.info["count"])

    @property
    def metric(self) -> str:
        return str(self.info["metric"])

    def count(self, where: RowFilter | None = None) -> int:
        """Committed rows ``where`` lets through."""
        flt = visible(where, len(self))
        rows = self.client.query(self.collection, **READ, filter=flt.milvus(),
                                 output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def find(self, queries: np.ndarray, k: int, where: RowFilter | None = None) -> Found:
        """Nearest ``k`` allowed crops of each query row (see :class:`Found`); exact over the
        allowed rows when at most :data:`EXACT_ROWS` (or ``k`` > :data:`MAX_TOPK`), else
        Milvus's index, repeated exactly if a row came back short."""
        flt = visible(where, len(self))
        allowed = self.count(flt) if flt.filters else len(self)
        q = prepare_vectors(np.asarray(queries, dtype=np.float32), self.metric)
        k = min(int(k), allowed)
        if k <= 0:
            return Found(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64),
                         allowed, True)
        if (flt.filters and allowed <= EXACT_ROWS) or k > MAX_TOPK:
            return Found(*self._exact(q, k, flt, allowed), allowed, True)
        hits = self.client.search(self.collection, **READ, data=q.tolist(), limit=k,
                                  filter=flt.milvus(), anns_field="vec",
                                  search_params=search_params(self.info, k,
                                                               allowed / max(len(self), 1)))
        if any(len(row) < k for row in hits):
            return Found(*self._exact(q, k, flt, allowed), allowed, True)
        ids = np.array([[h["id"] for h in row] for row in hits], dtype=np.int64)
        scores = np.array([[h["distance"] for h in row] for row in hits], dtype=np.float32)
        exact = self.info["kind"] == "flat"
        return Found(faiss_to_distance(scores, self.metric).astype(np.float32), ids, allowed,
                     exact)

    def _exact(self, q: np.ndarray, k: int, flt: RowFilter, allowed: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the ``allowed`` rows ``flt`` lets through, streamed: (Q, k)
        distances and ids, ties by id."""
        best_d = np.full((len(q), 0), np.inf)
        best_i = np.zeros((len(q), 0), np.int64)
        for ids, rows in self._stream(flt, ["vec"], allowed):
            d = exact_distances(q, np.array([r["vec"] for r in rows], np.float32), self.metric)
            best_d, best_i = nearest(np.concatenate([best_d, d], axis=1),
                                     np.concatenate([best_i, np.broadcast_to(ids, d.shape)], 1),
                                     k)
        return best_d.astype(np.float32), best_i

    def _stream(self, flt: RowFilter, fields: list[str], allowed: int | None = None
                ) -> Iterator[tuple[np.ndarray, list[dict[str, Any]]]]:
        """``(ids, rows)`` of the rows ``flt`` allows (``fields`` of each): one query when
        their number ``allowed`` is known and at most :data:`MAX_TOPK` (a query returns at most
        that many rows), else a window of :data:`MAX_TOPK` ids at a time."""
        expr = flt.milvus()
        if allowed is not None and allowed <= MAX_TOPK:
            rows = self.client.query(self.collection, **READ, output_fields=fields,
                                     filter=expr or f"id < {len(self)}", limit=max(allowed, 1))
            if rows:
                yield np.array([r["id"] for r in rows], np.int64), rows
            return
        for lo in range(0, len(self), MAX_TOPK):
            window = f"id >= {lo} and id < {lo + MAX_TOPK}"
            rows = self.client.query(self.collection, **READ, output_fields=fields,
                                     filter=f"{window} and ({expr})" if expr else window)
            if rows:
                yield np.array([r["id"] for r in rows], np.int64), rows

    def entries(self, ids: Sequence[int]) -> list[Entry]:
        """Rows of ``ids``, in that order.

        Raises:
            KeyError: an id is not among the committed rows.
        """
        ids = [int(i) for i in ids]
        cols = [c for c in probability_columns() if c[0] in self.trained_tasks]
        fields = ["id", "path", "camera", "frame", "identity"] + [c for _, _, c in cols]
        rows: dict[int, dict[str, Any]] = {}
        for start in range(0, len(ids), FETCH_BATCH):
            chunk = [i for i in ids[start:start + FETCH_BATCH] if 0 <= i < len(self)]
            if chunk:
                for row in self.client.query(self.collection, ids=chunk, output_fields=fields,
                                             **READ):
                    rows[int(row["id"])] = row
        missing = [i for i in ids if i not in rows]
        if missing:
            raise KeyError(f"image ids not in the gallery {self.location}: {missing[:10]}")
        return [self._entry(rows[i], cols) for i in ids]

    def _entry(self, row: dict[str, Any], cols: list[tuple[str, int, str]]) -> Entry:
        probs: dict[str, list[float]] = {t: [] for t in self.trained_tasks}
        for task, _, column in cols:
            probs[task].append(float(row[column]))

        def known(value: Any) -> int | None:
            return None if value is None or int(value) == _NONE else int(value)

        return Entry(id=int(row["id"]), path=json.loads(row["path"]),
                     camera=known(row["camera"]), frame=known(row["frame"]),
                     identity=known(row["identity"]), probabilities=probs,
                     trained_tasks=self.trained_tasks)

    def vectors_of(self, ids: Sequence[int]) -> np.ndarray:
        """Stored (prepared) vectors of ``ids``, (len(ids), D), in that order.

        Raises:
            KeyError: an id is not among the committed rows."""
        got: dict[int, Any] = {}
        ids = [int(i) for i in ids]
        for start in range(0, len(ids), FETCH_BATCH):
            chunk = [i for i in ids[start:start + FETCH_BATCH] if 0 <= i < len(self)]
            if chunk:
                for row in self.client.query(self.collection, ids=chunk,
                                             output_fields=["vec"], **READ):
                    got[int(row["id"])] = row["vec"]
        missing = [i for i in ids if i not in got]
        if missing:
            raise KeyError(f"image id(s) not in the gallery {self.location}: {missing[:10]}")
        return np.array([got[i] for i in ids], dtype=np.float32).reshape(
            len(ids), int(self.info["dim"]))

    def vector(self, image_id: int) -> np.ndarray:
        """The stored (prepared) vector of one crop, (D,)."""
        return self.vectors_of([image_id])[0]

    def vector_block(self, start: int, count: int) -> np.ndarray:
        """Stored vectors of ids ``start`` .. ``start + count - 1``, (count, D)."""
        return self.vectors_of(range(int(start), int(start) + int(count)))

    def ids(self, where: RowFilter | None = None) -> np.ndarray:
        """Ids of the committed rows ``where`` lets through, ascending (int64)."""
        parts = [ids for ids, _ in self._stream(visible(where, len(self)), ["id"])]
        return np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def products(self, where: RowFilter | None, columns: Sequence[str], k: int | None = None,
                 offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, product of the probability columns)`` of the rows ``where`` lets through:
        all in id order, or the ``k`` best from rank ``offset`` (ties: lower id). A scan of
        the allowed rows (no vector engine orders by a product of fields)."""
        known = {c for _, _, c in probability_columns()}
        if not columns or not set(columns) <= known:
            raise ValueError(f"columns {list(columns)}: expected probability columns")
        id_parts, score_parts = [], []
        for ids, rows in self._stream(visible(where, len(self)), list(columns)):
            id_parts.append(ids)
            values = np.array([[float(r[c]) for c in columns] for r in rows])
            score_parts.append(product(list(values.T)))
        ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64)
        scores = np.concatenate(score_parts) if score_parts else np.zeros(0)
        order = np.argsort(ids) if k is None else np.lexsort((ids, -scores))[offset:offset + k]
        return ids[order], scores[order]

    def _cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per committed row count (a scan of the gallery)."""
        held = self._memo.get(key)
        if held is None or held[0] != len(self):
            held = self._memo[key] = (len(self), compute())
        return held[1]

    def column(self, name: str) -> np.ndarray:
        """Column ``name`` (:func:`~attreid.search.filters.check_column`) of the committed
        rows in id order, (N,) float64; NaN where a camera or frame is unknown."""
        values = np.full(len(self), np.nan)
        for ids, rows in self._stream(visible(None, len(self)), [check_column(name)]):
            values[ids] = [np.nan if r[name] == _NONE else float(r[name]) for r in rows]
        return values

    def frame_range(self) -> tuple[int, int] | None:
        """``(first, last)`` frame number of the committed rows; None when no name gave one."""
        return self._cached("frames", self._frame_range)

    def _frame_range(self) -> tuple[int, int] | None:
        frames = [int(r["frame"]) for _, rows in self._stream(visible(None, len(self)),
                                                              ["frame"])
                  for r in rows if r["frame"] is not None and int(r["frame"]) != _NONE]
        return (int(min(frames)), int(max(frames))) if frames else None

    def cameras(self) -> list[int]:
        """Cameras present among the committed rows, sorted."""
        return self._cached("cameras", self._cameras)

    def _cameras(self) -> list[int]:
        return sorted({int(r["camera"]) for _, rows in self._stream(visible(None, len(self)),
                                                                    ["camera"])
                       for r in rows if r["camera"] is not None and int(r["camera"]) != _NONE})

    def sightings(self, ids: Sequence[int]) -> dict[int, Any]:
        """Footage sightings (time, track, box) are kept by the FAISS + SQLite index only, so
        far: none here."""
        return {}

    def track(self, image_id: int) -> list[int]:
        return []

    def ingested(self) -> dict[str, dict[str, Any]]:
        return {}

    def check_checkpoint(self, checkpoint: Any, digest: str | None = None) -> None:
        """Raise :class:`GalleryIndexError` unless ``checkpoint`` made the gallery."""
        from attreid.utils.files import file_sha256

        digest = digest or file_sha256(Path(checkpoint))
        if digest != self.info.get("checkpoint_sha256"):
            raise GalleryIndexError(
                f"{checkpoint}: this checkpoint did not make the gallery {self.location} "
                f"(sha256 {digest[:12]}..., the gallery's "
                f"{str(self.info.get('checkpoint_sha256'))[:12]}...); embeddings of different "
                "models cannot be compared")

    def paths_indexed(self, paths: Sequence[str]) -> list[str]:
        """Those of ``paths`` the committed gallery holds."""
        keys = sorted({path_key(p) for p in paths})
        found: set[str] = set()
        for start in range(0, len(keys), FETCH_BATCH):
            chunk = ", ".join(str(k) for k in keys[start:start + FETCH_BATCH])
            for row in self.client.query(self.collection, output_fields=["path"],
                                         filter=f"id < {len(self)} and path_key in [{chunk}]"):
                found.add(json.loads(row["path"]))
        return [p for p in paths if p in found]

    # ---- writing ---------------------------------------------------------------------------

    def add(self, paths: Sequence[str], embeddings: np.ndarray,
            probabilities: dict[str, np.ndarray],
            on_wait: Callable[[str], None] | None = None) -> int:
        """Add N crops not yet indexed atomically (all become visible at once, or none), after
        any other writer's; returns N.

        Raises:
            GalleryIndexError: a path already indexed, rows of the wrong shape or dimension.
        """
        paths = [str(p) for p in paths]
        check_rows(paths, embeddings, probabilities)
        return self.add_source(_array_source(paths, embeddings, probabilities), on_wait)

    def add_source(self, source: _Source,
                   on_wait: Callable[[str], None] | None = None) -> int:
        """:meth:`add` from a source of rows (:mod:`attreid.search.sources`: arrays or a
        feature store, read a chunk at a time)."""
        with writer_turn(self.client, self.name, self.lease_s, on_wait) as renew:
            self.reload()
            if source.dim != self.info["dim"]:
                raise GalleryIndexError(f"embeddings of dimension {source.dim}, the gallery "
                                        f"{self.location} holds {self.info['dim']}")
            again = [p for paths, _, _ in source.chunks()
                     for p in self.paths_indexed([str(q) for q in paths])]
            if again:
                raise GalleryIndexError(f"{self.location}: {len(again)} crop(s) already indexed "
                                        f"(e.g. {again[0]}); nothing added")
            start = len(self)
            self.client.delete(self.collection, filter=f"id >= {start}")  # a killed add's rows
            self._insert(source, start, renew)
            self.client.flush(self.collection)
            self._commit(start + source.count)
        return source.count

    def _insert(self, source: _Source, start: int, renew: Callable[[], None] | None) -> None:
        columns = [c for _, _, c in probability_columns()]
        for paths, embeddings, probs in source.chunks():
            x = prepare_vectors(np.asarray(embeddings), self.metric)
            p = np.asarray(probs, np.float32)
            for lo in range(0, len(paths), INSERT_BATCH):
                rows = []
                for i in range(lo, min(lo + INSERT_BATCH, len(paths))):
                    path = str(paths[i])
                    identity, camera, frame = parse_name(os.path.basename(path))
                    rows.append({"id": start + i, "vec": x[i].tolist(), "path": json.dumps(path),
                                 "path_key": path_key(path),
                                 "camera": _NONE if camera is None else camera,
                                 "frame": _NONE if frame is None else frame,
                                 "identity": _NONE if identity is None else identity,
                                 **dict(zip(columns, p[i].tolist()))})
                self.client.insert(self.collection, rows)
                if renew is not None:
                    renew()
            start += len(paths)

    def _commit(self, count: int) -> None:
        """Make rows ``< count`` visible: one upsert of the info row."""
        self.info = {**self.info, "count": int(count)}
        self.client.upsert(f"{self.collection}_info", [info_row(self.info)])


__all__ = ["EXACT_ROWS", "LEASE_S", "MilvusGallery", "connect", "path_key"]
