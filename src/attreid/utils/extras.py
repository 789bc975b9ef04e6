"""Optional dependencies (the ``pip install 'attreid[EXTRA]'`` extras), imported where used."""

from __future__ import annotations

import importlib
from types import ModuleType


def require_extra(module: str, what: str, extra: str, packages: str) -> ModuleType:
    """Import the optional ``module``, or raise ImportError saying ``what`` needs it and how to
    install it (``extra``: the attreid extra; ``packages``: the packages, for pip)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{what} needs {module}: pip install 'attreid[{extra}]' "
                          f"({packages})") from exc
