"""Files that readers never see half-written, and names fit to print.

``atomic_write_bytes`` writes to a temporary file in the same folder, fsyncs it and renames it
over the target (POSIX ``rename`` is atomic), so checkpoints, plots, feature stores and reports
are either the old file or the new one after a crash or a full disk.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator


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
