"""Checkpoints: saved atomically (:func:`attreid.utils.files.atomic_write_bytes`), loaded onto
the CPU, and model weights loaded with clear messages for wrapper prefixes and key mismatches."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from attreid.errors import AttreidError
from attreid.utils.files import atomic_write_bytes
from attreid.zoo import resolve_checkpoint, shipped_models


class CheckpointError(AttreidError, RuntimeError):
    """A checkpoint cannot be read or written; the message names the file."""


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Save a checkpoint dict atomically; on failure the previous file at ``path`` stays valid."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write checkpoint ({exc}); the previous "
                              "checkpoint, if any, is unchanged") from exc


def require_checkpoint(path: Path | str) -> Path:
    """The checkpoint file ``path`` stands for: a shipped model's file for its name
    (``market1501``, SHA-256 checked: :func:`attreid.zoo.resolve_checkpoint`), else ``path``.
    Checked first, before slower work that would fail later.

    Raises:
        ZooError: a shipped model's file is missing or altered.
        CheckpointError: no such file (the message lists the shipped models' names).
    """
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found{_names_hint(path)}")
    return path


def _names_hint(path: Path) -> str:
    names = sorted(shipped_models())
    if not names or len(path.parts) > 1:
        return ""
    return f" (nor a shipped model's name: {', '.join(names)})"


def load_checkpoint(path: Path | str) -> dict[str, Any]:
    """Load a checkpoint saved by :func:`save_checkpoint` onto the CPU."""
    path = require_checkpoint(path)
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
