"""Layout detection and one entry point for every reader."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from attreid.data.course import CSV_FILE, read_course
from attreid.data.custom import LABELS_FILE, read_custom
from attreid.data.market import FOLDERS, read_market
from attreid.data.records import DataError, Dataset

READERS: dict[str, Callable[[Path], Dataset]] = {
    "market": read_market,
    "course": read_course,
    "custom": read_custom,
}
_MARKERS = {"market": FOLDERS["train"], "course": CSV_FILE, "custom": LABELS_FILE}


def detect_layout(root: Path | str) -> str:
    """Name the layout of a dataset folder: ``market``, ``course`` or ``custom``.

    Decided by a marker: ``bounding_box_train/`` (market), ``annotations_train.csv`` (course),
    ``labels.csv`` (custom).
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise DataError(f"{root}: expected a dataset folder, found a file")
    found = [name for name, marker in _MARKERS.items() if (root / marker).exists()]
    if len(found) != 1:
        expected = ", ".join(f"{m} ({n})" for n, m in _MARKERS.items())
        what = "none" if not found else f"several: {found}"
        raise DataError(f"{root}: cannot tell the layout, found {what} of the markers {expected}")
    return found[0]


def load_dataset(root: Path | str, layout: str = "auto") -> Dataset:
    """Read a dataset folder in the given layout (``auto`` detects it)."""
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in READERS:
        raise ValueError(f"unknown layout {layout!r}; expected auto or one of {list(READERS)}")
    return READERS[layout](root)
