"""Files that readers never see half-written, names fit to print, and folders that writers
share.

``atomic_write_bytes`` writes to a temporary file in the same folder, fsyncs it and renames it
over the target (POSIX ``rename`` is atomic), so checkpoints, plots, feature stores and reports
are either the old file or the new one after a crash or a full disk.

Folders several processes write (an index folder, the scratch folders of its writers) are
guarded by an exclusive ``flock`` on a file :data:`FOLDER_LOCK` inside them
(:func:`lock_file`): a writer holds it while it works, and a leftover of a killed writer is a
folder whose lock anyone can take (:func:`remove_abandoned_folders`). The lock is released by
the kernel when its holder dies, so a killed writer never leaves a stale lock.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Callable, Iterator

try:
    import fcntl
except ImportError:  # not POSIX: no locking (one writer at a time is then the user's care)
    fcntl = None  # type: ignore[assignment]

FOLDER_LOCK = ".writer.lock"
"""The lock file of a shared folder (see :func:`lock_file`)."""


def current_umask() -> int:
    """The process's file-creation mask (read without changing it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path | str, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def printable_name(text: str) -> str:
    """``text`` (a file name or path) for people and for UTF-8 text files: valid UTF-8 on one
    line, every other character unchanged.

    A byte of a POSIX file name that is not UTF-8 reaches Python as a lone surrogate
    (U+DC80..U+DCFF, ``os.fsdecode``'s ``surrogateescape``) that no UTF-8 writer accepts; it is
    shown as ``\\xNN`` (the byte, as ``ls -b`` does). Other lone surrogates and the line
    separators U+2028, U+2029 are shown as ``\\uNNNN``, control characters (line breaks,
    tabs, ...) as ``\\n``, ``\\t``, ``\\xNN``. A display form: the exact name is what the
    caller stores elsewhere.

    Example: ``printable_name(os.fsdecode(b"caf\\xe9.jpg")) == "caf\\\\xe9.jpg"``.
    """
    if text.isprintable():  # the usual case: no surrogate, no control character
        return text
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF or code in (0x2028, 0x2029):  # or a line separator
            out.append(f"\\u{code:04x}")
        elif code < 0x20 or 0x7F <= code < 0xA0:
            out.append(repr(char)[1:-1])
        else:
            out.append(char)
    return "".join(out)


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (identifies a checkpoint or an export)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def output_folder(path: Path | str) -> Iterator[Path]:
    """Create the folder ``path`` (and its parents) for a command's outputs; if the block
    raises while the folder, made here, is still empty, remove it again, so a refused or
    failed command leaves nothing behind. A folder that existed before is never removed.

    Raises:
        OSError: the folder cannot be created (e.g. a file stands where a folder is needed).
    """
    path = Path(path)
    existed = path.exists()
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        if not existed:
            with suppress(OSError):  # rmdir removes only an empty folder (and may race a rank)
                path.rmdir()
        raise


def make_temp_folder(parent: Path | str, prefix: str, suffix: str = ".tmp") -> Path:
    """A new uniquely named folder in ``parent`` (``tempfile.mkdtemp``) with the mode any new
    folder gets under the process's umask (``mkdtemp`` makes it 0700, which would keep other
    accounts out of an index renamed from it)."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix))
    os.chmod(path, 0o777 & ~current_umask())
    return path


LOCK_QUIET_S = 1.0
"""A lock held longer than this is announced (``on_wait``): a reader that takes it for a moment
(to clear strays) is no other writer worth a message."""


def lock_file(path: Path | str, wait: bool = True,
              on_wait: Callable[[], None] | None = None) -> int | None:
    """Take an exclusive ``flock`` on ``path`` (created if missing, mode per the umask).

    Returns the descriptor that holds it (``os.close`` releases it), or ``None`` when
    ``wait`` is false and another process holds it. With ``wait``, ``on_wait`` is called once
    when the lock is still held after :data:`LOCK_QUIET_S`. A lock file replaced or removed while waiting (its folder was renamed
    away) is not the lock of ``path`` any more: the lock is then taken again on the current
    file.

    Raises:
        OSError: the file cannot be created or opened (missing folder, no permission).
    """
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)  # flock needs no write access
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                return None
            if on_wait is not None and not _lock_soon(fd, LOCK_QUIET_S):
                on_wait()
                on_wait = None
            fcntl.flock(fd, fcntl.LOCK_EX)  # at once if _lock_soon took it
        if _same_file(fd, path):
            return fd
        os.close(fd)  # the folder was replaced while we waited: lock the current file


def _lock_soon(fd: int, seconds: float) -> bool:
    """Try the lock of ``fd`` every 20 ms for ``seconds``; True once taken."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
    return False


def _same_file(fd: int, path: Path) -> bool:
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)


@contextmanager
def locked_temp_folder(parent: Path | str, prefix: str) -> Iterator[Path]:
    """A new folder ``parent/PREFIXxxxxxxxx.tmp`` (:func:`make_temp_folder`) whose
    :data:`FOLDER_LOCK` this process holds for the block; the folder is removed after it
    (unless the block renamed it away). :func:`remove_abandoned_folders` never removes it
    while the block runs, and removes it once its process is killed."""
    while True:
        path = make_temp_folder(parent, prefix)
        try:
            fd = lock_file(path / FOLDER_LOCK, wait=False)
        except FileNotFoundError:  # a cleaner took it for a leftover and removed it: again
            continue
        if fd is not None:
            break
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def remove_abandoned_folders(parent: Path | str, names: re.Pattern[str]) -> list[Path]:
    """Remove the folders of ``parent`` whose name fully matches ``names`` and whose
    :data:`FOLDER_LOCK` nobody holds (leftovers of killed writers; a folder without a lock
    file, made by an older attreid, counts as abandoned too). Folders this process cannot
    lock or remove are left alone. Returns the removed folders."""
    removed = []
    with suppress(OSError):
        candidates = sorted(p for p in Path(parent).iterdir() if names.fullmatch(p.name))
        for path in candidates:
            if path.is_symlink() or not path.is_dir():
                continue
            try:
                fd = lock_file(path / FOLDER_LOCK, wait=False)
            except OSError:  # removed meanwhile, or not ours to lock
                continue
            if fd is None:  # a live writer's
                continue
            try:
                shutil.rmtree(path, ignore_errors=True)
            finally:
                os.close(fd)
            if not path.exists():
                removed.append(path)
    return removed
