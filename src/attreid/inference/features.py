"""Feature stores: embeddings and per-image metadata streamed to sharded ``.npy`` files.

A gallery too large for memory is embedded batch by batch into a store folder, then read back
memory-mapped, block by block, by the evaluation (:func:`reid_metrics_on_store`) and the search
index (:func:`attreid.search.write_index_from_store`). Layout::

    STORE/
      manifest.json           # written last: no manifest = an unfinished extraction
      embeddings-00000.npy    # (rows, D) float32, shard 0
      <field>-00000.npy       # (rows, ...) each further field (ids, cams, probabilities, ...)
      paths-00000.txt         # optional: one image path per line, a JSON string
      embeddings-00001.npy    # shard 1, ...

Every shard holds ``shard_size`` rows but the last. Every file is written to a temporary name
and renamed into place (``os.replace``), the manifest after all shards, so a crash never leaves
a store that opens with missing or half-written rows. The writer holds one shard in memory.

Paths are stored exactly, whatever they hold: a file name's bytes that are not UTF-8 (which
Python holds as lone surrogates, see ``os.fsdecode``), line breaks, any character. Each line of
a paths file is a JSON string, plain UTF-8 where the path is valid UTF-8 and ``\\u`` escapes
where it is not, so reading gives back the identical ``str`` (stores of format 1 hold one plain
path per line, and are still read).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from attreid.errors import AttreidError
from attreid.schema import TASKS
from attreid.utils.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:  # torch: imported where metrics are computed
    from attreid.metrics import ReidResult

FORMAT_VERSION = 2
READ_FORMATS = (1, 2)
"""Store formats this attreid reads: 1 (paths as plain lines), 2 (paths as JSON strings)."""
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings"
PROBABILITIES = "probabilities"
DEFAULT_SHARD_SIZE = 8192
"""Rows per shard (16 MiB of 512-d float32 embeddings)."""


class FeatureStoreError(AttreidError, RuntimeError):
    """A feature store is missing, incomplete, corrupt or inconsistent; the message names the
    file."""


def probability_matrix(probabilities: Mapping[str, np.ndarray]) -> np.ndarray:
    """Task -> (N, C) class probabilities as one (N, P) float32 matrix: every class of every
    task, in the order of :data:`attreid.schema.TASKS` (P = 40)."""
    return np.concatenate([np.asarray(probabilities[t.name], dtype=np.float32) for t in TASKS],
                          axis=1)


def split_probabilities(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Inverse of :func:`probability_matrix`: (N, P) -> task -> (N, C)."""
    out, start = {}, 0
    for task in TASKS:
        out[task.name] = matrix[:, start:start + task.num_classes]
        start += task.num_classes
    return out


def _shard_name(name: str, shard: int, suffix: str = ".npy") -> str:
    return f"{name}-{shard:05d}{suffix}"


def _path_line(path: str) -> str:
    """One line of a paths file: ``path`` as a JSON string (module docstring)."""
    line = json.dumps(path, ensure_ascii=False)  # escapes line breaks and control characters
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (bytes of a name that are not UTF-8)
        line = json.dumps(path, ensure_ascii=True)
    return line + "\n"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically. numpy reports a full disk as a short write
    ("N requested and M written", an ``OSError`` without errno): raised here as ENOSPC naming
    the file, as every other write reports it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno is None and "requested and" in str(exc):
            raise OSError(errno.ENOSPC, f"No space left on device (a short write: {exc})",
                          str(tmp)) from exc
        raise
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


class FeatureWriter:
    """Append rows to a new store; one shard is buffered in memory, then written.

    The first :meth:`add` fixes the fields (names, dtypes, trailing shapes) and whether paths
    are kept; :meth:`close` writes the last, partial shard and the manifest. Used as a context
    manager, an exception removes the unfinished store.

    Example::

        with FeatureWriter("runs/gallery.features") as writer:
            for batch in batches:
                writer.add(embeddings, paths=names, ids=ids, cams=cams)
        store = writer.store
    """

    def __init__(self, root: Path | str, shard_size: int = DEFAULT_SHARD_SIZE,
                 info: Mapping[str, Any] | None = None, overwrite: bool = False) -> None:
        if shard_size < 1:
            raise ValueError(f"shard_size: got {shard_size}, expected >= 1")
        self.root = Path(root)
        if self.root.exists() and (not self.root.is_dir() or any(self.root.iterdir())):
            if not overwrite:
                raise FeatureStoreError(f"{self.root}: exists and is not an empty folder; "
                                        "choose a new path or overwrite it")
            if self.root.is_dir():
                shutil.rmtree(self.root)
            else:
                self.root.unlink()
        self.root.mkdir(parents=True, exist_ok=True)
        self.shard_size = shard_size
        self.info = dict(info or {})
        self.count = 0
        self.store: FeatureStore | None = None
        self._shards: list[int] = []
        self._fields: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        self._buffers: dict[str, np.ndarray] = {}
        self._paths: list[str] | None = None
        self._filled = 0

    def __enter__(self) -> "FeatureWriter":
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.close()
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def _start(self, arrays: dict[str, np.ndarray], with_paths: bool) -> None:
        self._fields = {k: (v.dtype, v.shape[1:]) for k, v in arrays.items()}
        self._buffers = {k: np.empty((self.shard_size, *shape), dtype)
                         for k, (dtype, shape) in self._fields.items()}
        self._paths = [] if with_paths else None

    def _check(self, arrays: dict[str, np.ndarray], paths: Sequence[str] | None) -> int:
        n = len(arrays[EMBEDDINGS])
        if arrays[EMBEDDINGS].ndim != 2:
            raise ValueError(f"embeddings: expected (N, D), got {arrays[EMBEDDINGS].shape}")
        if not self._fields:
            self._start(arrays, paths is not None)
        if set(arrays) != set(self._fields) or (paths is None) != (self._paths is None):
            raise ValueError(f"{self.root}: every add() needs the fields {sorted(self._fields)}"
                             f" (paths: {self._paths is not None}), got {sorted(arrays)} "
                             f"(paths: {paths is not None})")
        for name, value in arrays.items():
            shape = self._fields[name][1]
            if len(value) != n or value.shape[1:] != shape:
                raise ValueError(f"{name}: expected shape ({n}, {', '.join(map(str, shape))})"
                                 f", got {value.shape}")
        if paths is not None and len(paths) != n:
            raise ValueError(f"paths: expected {n} paths, got {len(paths)}")
        return n

    def add(self, embeddings: np.ndarray, paths: Sequence[str] | None = None,
            **fields: np.ndarray) -> None:
        """Append N rows: ``embeddings`` (N, D) (stored float32), their ``paths`` (optional,
        N strings) and further per-row arrays (N, ...) such as ``ids`` and ``cams``."""
        arrays = {EMBEDDINGS: np.asarray(embeddings, dtype=np.float32),
                  **{k: np.asarray(v) for k, v in fields.items()}}
        n = self._check(arrays, paths)
        done = 0
        while done < n:
            take = min(n - done, self.shard_size - self._filled)
            for name, value in arrays.items():
                self._buffers[name][self._filled:self._filled + take] = value[done:done + take]
            if self._paths is not None and paths is not None:
                self._paths.extend(str(p) for p in paths[done:done + take])
            self._filled += take
            done += take
            if self._filled == self.shard_size:
                self._flush()
        self.count += n

    def _flush(self) -> None:
        shard = len(self._shards)
        for name, buffer in self._buffers.items():
            _atomic_save(self.root / _shard_name(name, shard), buffer[:self._filled])
        if self._paths is not None:
            atomic_write_bytes(self.root / _shard_name("paths", shard, ".txt"),
                               "".join(_path_line(p) for p in self._paths).encode("utf-8"))
            self._paths.clear()
        self._shards.append(self._filled)
        self._filled = 0

    def close(self) -> "FeatureStore":
        """Write the last shard and the manifest; returns the store, opened."""
        if self.store is not None:
            return self.store
        if self._filled:
            self._flush()
        dim = self._fields[EMBEDDINGS][1][0] if self._fields else 0
        manifest = {
            "format": FORMAT_VERSION, "count": self.count, "dim": int(dim),
            "shard_size": self.shard_size, "shards": self._shards,
            "fields": {k: {"dtype": dtype.str, "shape": list(shape)}
                       for k, (dtype, shape) in self._fields.items()},
            "paths": self._paths is not None, "info": self.info,
        }
        self._buffers = {}
        # ASCII JSON: any str in ``info`` (a checkpoint path, ...) is written as \u escapes
        atomic_write_text(self.root / MANIFEST,
                          json.dumps(manifest, indent=1, ensure_ascii=True) + "\n")
        self.store = FeatureStore.open(self.root)
        return self.store


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Chunk:
    """Rows ``start:stop`` of a store: memory-mapped arrays (read-only views) and paths."""

    start: int
    stop: int
    arrays: dict[str, np.ndarray]
    paths: list[str] | None = field(default=None)


class FeatureStore:
    """A store folder opened for reading (see the module docstring).

    Shards are memory-mapped only while a chunk of them is in use, so reading the whole
    store keeps one shard's pages mapped at a time.
    """

    def __init__(self, root: Path, manifest: dict[str, Any]) -> None:
        self.root = root
        self.manifest = manifest
        self.shard_rows: list[int] = [int(r) for r in manifest["shards"]]
        self.starts = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)

    @classmethod
    def open(cls, root: Path | str) -> "FeatureStore":
        """Open and validate a store: the manifest, then every shard file's header.

        Raises:
            FeatureStoreError: missing folder or manifest (an unfinished extraction), a
                missing, truncated or mismatched shard; the message names the file.
        """
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise FeatureStoreError(f"{root}: not a feature store ({MANIFEST} not found; an "
                                    "interrupted extraction leaves none: extract again)")
        try:
            manifest = json.loads(path.read_text())
            shards, fields = list(manifest["shards"]), dict(manifest["fields"])
            count, version = int(manifest["count"]), manifest["format"]
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise FeatureStoreError(f"{path}: corrupt manifest ({exc!r})") from exc
        if version not in READ_FORMATS:
            raise FeatureStoreError(f"{path}: store format {version!r}, this attreid reads "
                                    f"{' and '.join(map(str, READ_FORMATS))}; extract again")
        if sum(shards) != count:
            raise FeatureStoreError(f"{path}: shards hold {sum(shards)} rows, count says "
                                    f"{count}")
        store = cls(root, manifest)
        for shard, rows in enumerate(shards):
            for name, spec in fields.items():
                store._check_shard(name, shard, rows, spec)
            if manifest.get("paths"):
                store._check_paths(shard, rows)
        return store

    def _check_shard(self, name: str, shard: int, rows: int, spec: dict[str, Any]) -> None:
        array = self._map(name, shard)
        expected = (rows, *spec["shape"])
        if array.shape != expected or array.dtype.str != spec["dtype"]:
            raise FeatureStoreError(f"{self.root / _shard_name(name, shard)}: shape "
                                    f"{array.shape} {array.dtype.str}, the manifest says "
                                    f"{expected} {spec['dtype']}")

    def _check_paths(self, shard: int, rows: int) -> None:
        path = self.root / _shard_name("paths", shard, ".txt")
        try:
            with open(path, "rb") as f:
                lines = sum(1 for _ in f)
        except OSError as exc:
            raise FeatureStoreError(f"{path}: cannot read the paths of shard {shard} "
                                    f"({exc.strerror})") from exc
        if lines != rows:
            raise FeatureStoreError(f"{path}: {lines} paths, the shard has {rows} rows")

    def _map(self, name: str, shard: int) -> np.ndarray:
        path = self.root / _shard_name(name, shard)
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise FeatureStoreError(f"{path}: cannot read shard {shard} of {name!r} "
                                    f"({exc})") from exc

    def __len__(self) -> int:
        return int(self.manifest["count"])

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return int(self.manifest["dim"])

    @property
    def fields(self) -> list[str]:
        """Names of the per-row arrays (``embeddings`` first)."""
        return list(self.manifest["fields"])

    @property
    def info(self) -> dict[str, Any]:
        """What the writer recorded (checkpoint, metric, ...)."""
        return dict(self.manifest["info"])

    @property
    def has_paths(self) -> bool:
        return bool(self.manifest["paths"])

    def _require(self, names: Iterable[str]) -> None:
        missing = [n for n in names if n not in self.manifest["fields"]]
        if missing:
            raise FeatureStoreError(f"{self.root}: no field {missing} (the store has "
                                    f"{self.fields})")

    def chunks(self, names: Sequence[str] = (EMBEDDINGS,), chunk_size: int | None = None,
               paths: bool = False) -> Iterator[Chunk]:
        """Consecutive chunks of at most ``chunk_size`` rows (default: a shard), in order.

        Chunks never straddle shards. Arrays are read-only memory-mapped views: copy what must
        outlive the next chunk.
        """
        self._require(names)
        if paths and not self.has_paths:
            raise FeatureStoreError(f"{self.root}: the store keeps no paths")
        for shard, rows in enumerate(self.shard_rows):
            maps = {n: self._map(n, shard) for n in names}
            names_list = self._read_paths(shard) if paths else None
            step = chunk_size or rows
            for lo in range(0, rows, step):
                hi = min(lo + step, rows)
                start = int(self.starts[shard])
                yield Chunk(start + lo, start + hi, {n: m[lo:hi] for n, m in maps.items()},
                            None if names_list is None else names_list[lo:hi])
            del maps  # unmap the shard before the next one

    def _read_paths(self, shard: int) -> list[str]:
        path = self.root / _shard_name("paths", shard, ".txt")
        lines = path.read_bytes().decode("utf-8", "surrogateescape").split("\n")[:-1]
        if self.manifest["format"] == 1:  # plain lines
            return lines
        try:
            names = [json.loads(line) for line in lines]
        except json.JSONDecodeError as exc:
            raise FeatureStoreError(f"{path}: corrupt path list ({exc})") from exc
        if not all(isinstance(name, str) for name in names):
            raise FeatureStoreError(f"{path}: corrupt path list (a line is not a JSON string)")
        return names

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (K,) of one field, in that order, as an in-memory copy (K, ...)."""
        self._require([name])
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        spec = self.manifest["fields"][name]
        out = np.empty((len(rows), *spec["shape"]), dtype=np.dtype(spec["dtype"]))
        shard_of = np.searchsorted(self.starts, rows, side="right") - 1
        for shard in np.unique(shard_of):
            sel = np.nonzero(shard_of == shard)[0]
            out[sel] = self._map(name, int(shard))[rows[sel] - self.starts[shard]]
        return out

    def column(self, name: str) -> np.ndarray:
        """A whole field in memory, (N, ...): for small per-row metadata (ids, cams)."""
        return self.take(name, np.arange(len(self)))


# --------------------------------------------------------------------------------------------
# Extraction and evaluation
# --------------------------------------------------------------------------------------------


@dataclass
class ImageBatch:
    """Images to embed and their per-image metadata.

    Attributes:
        images: N PIL images or files, or a tensor batch (N, 3, H, W) (uint8 pixels or
            preprocessed floats), as :meth:`attreid.Predictor.predict` takes them.
        paths: N names kept in the store (``None``: no paths).
        fields: more per-image arrays (N, ...) to store, e.g. ``ids`` and ``cams``.
    """

    images: Any
    paths: Sequence[str] | None = None
    fields: dict[str, np.ndarray] = field(default_factory=dict)


def extract_to_store(predictor: Any, batches: Iterable[ImageBatch], out: Path | str,
                     shard_size: int = DEFAULT_SHARD_SIZE, info: Mapping[str, Any] | None = None,
                     overwrite: bool = False,
                     progress: Callable[[int], None] | None = None) -> FeatureStore:
    """Embed ``batches`` with a predictor and stream the results to a new store ``out``.

    Stores ``embeddings`` (N, D), ``probabilities`` (N, 41) (see :func:`probability_matrix`),
    the batches' paths and fields. Memory: one batch plus one shard, whatever N.
    ``progress`` gets the number of images done after each batch.
    """
    meta = {"checkpoint": str(getattr(predictor, "checkpoint", "")),
            "metric": getattr(predictor, "distance", None), **(info or {})}
    with FeatureWriter(out, shard_size, meta, overwrite) as writer:
        for batch in batches:
            result = predictor.predict(batch.images)
            writer.add(result.embeddings, batch.paths,
                       probabilities=probability_matrix(result.probabilities), **batch.fields)
            if progress:
                progress(writer.count)
    return writer.close()


def store_blocks(store: FeatureStore, ids: str = "ids", cams: str | None = "cams",
                 block_size: int | None = None
                 ) -> Callable[[], Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]]:
    """Gallery blocks of a store for :func:`attreid.metrics.reid_metrics_streamed`: each
    ``(embeddings (g, D), ids (g,), cams (g,) or None)``, copied from the mapped shard one
    block at a time (``block_size`` rows, default a shard)."""
    store._require([ids] + ([cams] if cams else []))

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        names = [EMBEDDINGS, ids] + ([cams] if cams else [])
        for chunk in store.chunks(names, block_size):
            a = chunk.arrays
            yield (np.array(a[EMBEDDINGS]), np.array(a[ids]),
                   np.array(a[cams]) if cams else None)

    return blocks


def reid_metrics_on_store(query_features: np.ndarray, query_ids: np.ndarray,
                          gallery: FeatureStore, query_cams: np.ndarray | None = None,
                          protocol: str = "market", metric: str = "euclidean",
                          max_rank: int = 50, chunk_size: int = 256,
                          block_size: int | None = 4096,
                          exclude: np.ndarray | None = None) -> ReidResult:
    """CMC / mAP / mINP of queries (Q, D) against a gallery store with fields ``ids`` (and
    ``cams`` when ``query_cams`` is given), equal to :func:`attreid.metrics.reid_metrics` on
    the (Q, G) distance matrix (computed block by block). Memory: O(chunk_size * block_size)
    (about 40 bytes per entry: ~40 MiB with the defaults), whatever G; the gallery is read
    2 * ceil(Q / chunk_size) times (from the page cache once it fits there). ``block_size``
    ``None``: one shard per block. ``exclude``: (Q, C) gallery rows left out of each query's
    ranking, -1 for none (as :func:`~attreid.metrics.reid_metrics`)."""
    from attreid.metrics import reid_metrics_streamed  # torch: only when scoring

    blocks = store_blocks(gallery, cams="cams" if query_cams is not None else None,
                          block_size=block_size)
    return reid_metrics_streamed(query_features, query_ids, blocks, query_cams,
                                 protocol=protocol, metric=metric, max_rank=max_rank,
                                 chunk_size=chunk_size, exclude=exclude)
