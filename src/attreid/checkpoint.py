"""Atomic checkpoint files: written to a temporary file in the same folder, then renamed."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from attreid.errors import AttreidError


class CheckpointError(AttreidError, RuntimeError):
    """A checkpoint cannot be read or written; the message names the file."""


def _umask() -> int:
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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual mode
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


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Save a checkpoint dict atomically; on failure the previous file at ``path`` stays valid."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write checkpoint ({exc}); the previous "
                              "checkpoint, if any, is unchanged") from exc


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint saved by :func:`save_checkpoint` onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises several types for truncated/corrupt files
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc})") from exc
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path}: not an attreid checkpoint (expected keys model, config)")
    return state


WRAPPER_PREFIXES = ("module.", "_orig_mod.")
"""Key prefixes that wrappers add to a state dict: DataParallel/DistributedDataParallel
(``module.``) and ``torch.compile`` (``_orig_mod.``)."""


def strip_wrapper_prefixes(state: Mapping[str, Any]) -> dict[str, Any]:
    """``state`` with every :data:`WRAPPER_PREFIXES` component removed from its keys, wherever
    it stands (a compiled DDP model writes ``module._orig_mod.backbone...``; a compiled
    sub-module ``backbone._orig_mod.layer1...``)."""
    def clean(key: str) -> str:
        parts = key.split(".")
        return ".".join(p for p in parts if f"{p}." not in WRAPPER_PREFIXES)
    return {clean(k): v for k, v in state.items()}


def describe_key_mismatch(missing: Iterable[str], unexpected: Iterable[str], shown: int = 5
                          ) -> str:
    """``"3 missing (e.g. [...]), 2 unexpected (e.g. [...])"``, naming only what is there."""
    parts = []
    for name, keys in (("missing", sorted(missing)), ("unexpected", sorted(unexpected))):
        if keys:
            more = ", ..." if len(keys) > shown else ""
            parts.append(f"{len(keys)} {name} ({', '.join(keys[:shown])}{more})")
    return ", ".join(parts) or "no key differs"


def load_model_weights(model: nn.Module, state: Mapping[str, torch.Tensor],
                       path: Path | str) -> None:
    """Load a checkpoint's ``model`` state dict into ``model`` strictly, after
    :func:`strip_wrapper_prefixes`.

    Raises:
        CheckpointError: naming ``path`` and, for keys that do not match, how many are missing
            and unexpected with a few of each; for tensors of another shape, a few of them
            (a checkpoint of another model or configuration).
    """
    state = strip_wrapper_prefixes(state)
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        raise CheckpointError(f"{path}: the weights do not fit this model: "
                              f"{describe_key_mismatch(missing, unexpected)}")
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if tuple(state[k].shape) != tuple(v.shape)]
    if shapes:
        raise CheckpointError(f"{path}: {len(shapes)} tensor(s) of another shape than this "
                              f"model's (checkpoint vs model): {'; '.join(shapes[:3])}")
    model.load_state_dict(state)
