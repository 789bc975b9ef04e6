"""The registry of shipped models: ``models.json`` beside this file names each model's
checkpoint, its SHA-256, its calibration and its card (data, licence, command, machine,
scores). A name resolves to the checkpoint's path inside the installed package, after the file's
SHA-256 is checked; a path is returned as it is.

Example::

    resolve_checkpoint("market1501")       # .../attreid/zoo/market1501.pt, sha256 checked
    resolve_checkpoint("runs/cpu/best.pt")  # Path("runs/cpu/best.pt"), unchecked
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from attreid.errors import AttreidError

HERE = Path(__file__).resolve().parent
REGISTRY = HERE / "models.json"
DEFAULT_MODEL = "market1501"
"""The model used where a command or API is given no checkpoint."""


class ZooError(AttreidError, RuntimeError):
    """A shipped model is missing, altered or unknown; the message names it and what to do."""


@dataclass(frozen=True)
class ShippedModel:
    """One shipped model: ``file`` and ``calibration`` are file names beside ``models.json``;
    ``card`` holds the model card's fields (see docs/MODEL_CARD.md)."""

    name: str
    file: str
    sha256: str
    summary: str = ""
    calibration: str = ""
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        return HERE / self.file

    @property
    def calibration_path(self) -> Path | None:
        return HERE / self.calibration if self.calibration else None


@lru_cache(maxsize=1)
def shipped_models() -> dict[str, ShippedModel]:
    """Every shipped model by name (empty when the registry is missing).

    Raises:
        ZooError: ``models.json`` cannot be parsed or lacks a field.
    """
    if not REGISTRY.is_file():
        return {}
    try:
        entries = json.loads(REGISTRY.read_text())
        return {name: ShippedModel(name=name, **entry) for name, entry in entries.items()}
    except (ValueError, TypeError) as exc:
        raise ZooError(f"{REGISTRY}: the registry of shipped models is damaged ({exc}); "
                       "reinstall attreid") from None


def is_model_name(value: Path | str) -> bool:
    """Whether ``value`` names a shipped model (and no file of that name exists here)."""
    text = str(value)
    return text in shipped_models() and not Path(text).is_file()


def shipped_model(name: str) -> ShippedModel:
    """The shipped model ``name``.

    Raises:
        ZooError: no model of that name is shipped (the message lists those that are).
    """
    models = shipped_models()
    if name not in models:
        known = ", ".join(sorted(models)) or "none in this installation"
        raise ZooError(f"{name}: no shipped model of that name (shipped: {known}; "
                       "attreid models lists them)")
    return models[name]


def resolve_checkpoint(value: Path | str) -> Path:
    """The checkpoint file ``value`` stands for: a shipped model's file when ``value`` is its
    name (checked against its SHA-256 once per process), else ``Path(value)`` unchanged (its
    existence is checked by the loader).

    Raises:
        ZooError: the shipped file is missing or its SHA-256 differs from the registry's.
    """
    if not is_model_name(value):
        return Path(value)
    model = shipped_model(str(value))
    _check_file(model.path, model.sha256, model.name)
    return model.path


def find_by_sha256(digest: str) -> ShippedModel | None:
    """The shipped model whose checkpoint has SHA-256 ``digest`` (e.g. the checkpoint recorded
    in an index built with it, after the package moved), else None."""
    return next((m for m in shipped_models().values() if m.sha256 == digest), None)


def recorded_checkpoint(path: Path | str, digest: str) -> Path:
    """The checkpoint a record (e.g. a search index) names: ``path``, or when that file is
    gone (a reinstalled package moves a shipped model) the shipped model with SHA-256
    ``digest``."""
    path = Path(path)
    shipped = find_by_sha256(digest)
    if shipped is None or (path.is_file() and path.resolve() != shipped.path.resolve()):
        return path
    _check_file(shipped.path, shipped.sha256, shipped.name)  # a damaged file is named so
    return shipped.path


@lru_cache(maxsize=8)
def _check_file(path: Path, expected: str, name: str) -> None:
    if not path.is_file():
        raise ZooError(f"{name}: the shipped model's file {path} is missing; reinstall attreid "
                       f"(in a git clone: git checkout -- {path})")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != expected:
        raise ZooError(f"{name}: {path} has sha256 {digest[:16]}..., not the registry's "
                       f"{expected[:16]}...: the file is damaged or was replaced; reinstall "
                       f"attreid (in a git clone: git checkout -- {path})")


__all__ = ["DEFAULT_MODEL", "ShippedModel", "ZooError", "find_by_sha256", "is_model_name",
           "recorded_checkpoint", "resolve_checkpoint", "shipped_model", "shipped_models"]
