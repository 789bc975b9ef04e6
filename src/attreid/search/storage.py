"""An index folder as several processes share it: its writer lock, the scratch folders of its
writers, a database another process is writing, and a full disk.

* **One writer at a time.** ``attreid index add`` (and ``index build --overwrite`` of an
  existing folder) holds :func:`writer_lock`, an exclusive ``flock`` on ``INDEX/.writer.lock``,
  from reading the index's current state to switching it to the new generation; a second
  writer waits (told once through ``on_wait``) and then appends after the first. Readers take
  no lock. The kernel releases the lock of a killed writer.
* **Scratch folders** of writers (``.INDEX.add.*.tmp``, ``.INDEX.features.*.tmp``,
  ``.INDEX.*.tmp`` beside the index) hold the same lock while in use; one left by a killed
  writer is removed by the next build, add or open (:func:`remove_scratch`).
* **A database being written.** A reader that meets SQLite's write lock waits up to
  :data:`READ_TIMEOUT_S`, then gets :func:`busy_error` (try again), not "corrupt".
* **Vectors files** are written through a Python file (:func:`write_vectors`), so that a
  full disk is an ``OSError`` there, never a FAISS ``RuntimeError`` or a short file.
* **A full disk** (``ENOSPC``/``EDQUOT``, SQLite's "database or disk is full") while an index or
  its scratch is written becomes :class:`IndexDiskFullError`, naming the folder, the space the
  write needs (:func:`space_needed`) and the space free; what was written is rolled back.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from attreid.errors import AttreidError
from attreid.search.vectors import _faiss
from attreid.utils.files import FOLDER_LOCK, lock_file, remove_abandoned_folders

WRITER_LOCK = FOLDER_LOCK
"""The writer lock of an index folder (a build's temporary folder holds it under this name
too, so a new index is born locked)."""
READ_TIMEOUT_S = 30.0
"""Seconds a reader waits for a writer's SQLite lock (held while added rows are committed)."""
ROW_BYTES = 1024
"""Disk space of one image row (40 probabilities, path, name, page overhead), rounded up."""
STORE_ROW_BYTES = 512
"""Disk space of one crop in a scratch feature store beside its embedding (40 float32
probabilities, its path)."""
_FULL = (errno.ENOSPC, errno.EDQUOT)


class GalleryIndexError(AttreidError, RuntimeError):
    """An index folder is missing, corrupt or does not belong to the given checkpoint."""


class IndexDiskFullError(GalleryIndexError):
    """The disk filled up while an index or its scratch was written; the message names the
    folder and the free space the write needs. The index is as it was before."""


@contextmanager
def writer_lock(root: Path, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the writer lock of the index folder ``root`` for the block, waiting for another
    writer first (``on_wait`` gets one message saying so before the wait).

    Raises:
        GalleryIndexError: the folder is gone, or the lock file cannot be made (no write access).
    """
    def waiting() -> None:
        if on_wait is not None:
            on_wait(f"{root}: another process is writing this index (attreid index add or "
                    "build); waiting for it to finish")

    try:
        fd = lock_file(root / WRITER_LOCK, wait=True, on_wait=waiting)
    except FileNotFoundError:
        raise GalleryIndexError(f"{root}: index folder not found (removed while this command "
                                "ran?); make one with `attreid index build`") from None
    except OSError as exc:
        raise GalleryIndexError(f"{root / WRITER_LOCK}: cannot lock the index for writing "
                                f"({exc.strerror or exc}); writing an index needs write access "
                                "to its folder") from exc
    try:
        yield
    finally:
        os.close(fd)


def try_writer_lock(root: Path) -> int | None:
    """The writer lock of ``root`` if nobody holds it and it can be made (a descriptor to
    ``os.close``), else ``None`` (a writer is busy, or the folder is read-only to us)."""
    try:
        return lock_file(root / WRITER_LOCK, wait=False)
    except OSError:
        return None


def scratch_names(index_name: str) -> re.Pattern[str]:
    """Names of the scratch folders of writers of the index folder ``index_name``: a build's
    ``.NAME.xxxxxxxx.tmp`` and ``.NAME.features.xxxxxxxx.tmp``, an add's
    ``.NAME.add.xxxxxxxx.tmp`` (``xxxxxxxx``: ``mkdtemp``'s 8 random characters)."""
    return re.compile(rf"\.{re.escape(index_name)}\.(?:add\.|features\.)?[a-z0-9_]{{8}}\.tmp")


def remove_scratch(root: Path) -> list[Path]:
    """Remove the scratch folders that killed writers of the index ``root`` left beside it
    (their lock is free); a live writer's are kept. Returns those removed."""
    return remove_abandoned_folders(root.parent, scratch_names(root.name))


def is_locked(exc: sqlite3.Error) -> bool:
    """SQLite gave up waiting for another connection's lock (SQLITE_BUSY / SQLITE_LOCKED)."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF in (5, 6)) or "is locked" in str(exc)


def busy_error(db_path: Path, exc: sqlite3.Error) -> GalleryIndexError:
    """The error for a reader that waited :data:`READ_TIMEOUT_S` for a writer."""
    return GalleryIndexError(f"{db_path}: another process is writing this index right now "
                             f"(SQLite: {exc}, still after {READ_TIMEOUT_S:g} s); the index is "
                             "not damaged: try again when the add has finished")


def space_needed(rows: int, vectors: int, dim: int, store_rows: int = 0) -> int:
    """Bytes a write needs free: ``rows`` new image rows, a vectors file of ``vectors``
    float32 vectors of ``dim`` (plus ids), a scratch feature store of ``store_rows`` crops."""
    return (rows * ROW_BYTES + vectors * (4 * dim + 8)
            + store_rows * (4 * dim + STORE_ROW_BYTES))


def _full_reason(exc: BaseException) -> str | None:
    if isinstance(exc, AttreidError):
        return None
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return exc.strerror or str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return f"SQLite: {exc}"  # "database or disk is full"
    if isinstance(exc, RuntimeError) and "No space left" in str(exc):
        return "No space left on device"  # a FAISS write error
    return None


def _free_bytes(path: Path) -> int | None:
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def _size(n: int) -> str:
    value = float(n)
    for unit in ("bytes", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


@contextmanager
def disk_full(where: Path, needed: int, outcome: str) -> Iterator[None]:
    """Turn a full disk met in the block into :class:`IndexDiskFullError`: ``where`` (the
    folder written), ``needed`` (bytes, :func:`space_needed`), the bytes free now, and
    ``outcome`` (what is left, e.g. "the index is unchanged"). Other errors pass."""
    try:
        yield
    except (OSError, sqlite3.OperationalError, RuntimeError) as exc:
        reason = _full_reason(exc)
        if reason is None:
            raise
        free = _free_bytes(where)
        now = "" if free is None else f", {_size(free)} free now"
        raise IndexDiskFullError(
            f"{where}: the disk is full ({reason}); this write needs about {_size(needed)} "
            f"free there{now}. Free some space (or write the index to another disk) and run it "
            f"again; {outcome}") from exc


def write_vectors(vectors: Any, path: Path) -> None:
    """Write FAISS vectors to ``path`` atomically (a temporary file, fsync, rename). The bytes
    go through a Python file, so a full disk raises ``OSError`` (ENOSPC) here, never a FAISS
    ``RuntimeError`` nor (an error at FAISS's final ``fclose`` is only printed) a short file."""
    faiss = _faiss()
    tmp = path.with_name(f".{path.name}.tmp")
    failed: list[OSError] = []
    try:
        with open(tmp, "wb") as f:
            def write(data: bytes) -> None:
                if not failed:
                    try:
                        f.write(data)
                    except OSError as exc:  # kept: an exception cannot cross FAISS's C++
                        failed.append(exc)

            faiss.write_index(vectors, faiss.PyCallbackIOWriter(write))
            if failed:
                raise failed[0]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_vectors(path: Path, info: dict[str, Any]) -> Any:
    """The FAISS vectors of an index (``info``: its info table), checked against its dimension;
    an IVF index gets its direct map (for ``reconstruct``).

    Raises:
        GalleryIndexError: the file is missing, unreadable or of another dimension.
    """
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
