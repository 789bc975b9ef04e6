"""Dataset records shared by every reader: one image, its identity, camera and attributes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from attreid.errors import AttreidError
from attreid.schema import MISSING, NUM_TASKS

DISTRACTOR_ID = 0
"""Market-1501 gallery id 0000: a detection of nobody in the query set; counts as a wrong match."""
JUNK_ID = -1
"""Market-1501 gallery id -1: a junk detection; ignored by the standard protocol."""


class DataError(AttreidError, ValueError):
    """Invalid dataset input. The message names the file, row or value and what was expected.

    ``problems`` lists every problem found (a reader checks all files/rows before raising).
    """

    MAX_SHOWN = 20

    def __init__(self, message: str, problems: Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems) if problems else [message]

    @classmethod
    def many(cls, problems: Sequence[str]) -> "DataError":
        """One error for several problems; the message shows the first ``MAX_SHOWN``."""
        if len(problems) == 1:
            return cls(problems[0])
        shown = "\n  ".join(problems[: cls.MAX_SHOWN])
        more = len(problems) - cls.MAX_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        return cls(f"{len(problems)} problems:\n  {shown}{tail}", problems)


T = TypeVar("T")
U = TypeVar("U")


def collect(items: Iterable[T], fn: Callable[[T], U]) -> list[U]:
    """Apply ``fn`` to every item; gather each DataError and raise them together at the end."""
    out, problems = [], []
    for item in items:
        try:
            out.append(fn(item))
        except DataError as exc:
            problems.extend(exc.problems)
    if problems:
        raise DataError.many(problems)
    return out


@dataclass(frozen=True)
class ImageRecord:
    """One image.

    Attributes:
        path: the image file.
        pid: person id as in the file names (0 = distractor, -1 = junk); ``None`` when unlabelled
            (the course layout's test/ and queries/).
        camid: camera 1..6 in Market-1501; ``None`` when the layout gives no camera.
        attributes: 12 task labels (see :mod:`attreid.schema`), ``MISSING`` where unknown;
            ``None`` when the identity has no attribute annotation at all.
    """

    path: Path
    pid: int | None
    camid: int | None = None
    attributes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Dataset:
    """A dataset loaded by one of the readers.

    ``train`` carries identities and attributes; ``query``/``gallery`` form the test protocol
    (unlabelled for the course layout). ``val_ids`` are the identities of the layout's own
    validation split (the study's first 225 CSV rows for the course layout), empty otherwise.
    ``duplicates`` maps an excluded duplicate file to the file it duplicates.
    """

    root: Path
    layout: str
    train: list[ImageRecord]
    query: list[ImageRecord]
    gallery: list[ImageRecord]
    val_ids: tuple[int, ...] = ()
    duplicates: dict[Path, Path] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def split(self, name: str) -> list[ImageRecord]:
        """Return the records of ``train``, ``query`` or ``gallery``."""
        if name not in ("train", "query", "gallery"):
            raise ValueError(f"unknown split {name!r}; expected train, query or gallery")
        return getattr(self, name)


def attribute_matrix(records: Sequence[ImageRecord]) -> np.ndarray:
    """Stack task labels: (N, 12) int64, ``MISSING`` for records without attributes."""
    out = np.full((len(records), NUM_TASKS), MISSING, dtype=np.int64)
    for i, rec in enumerate(records):
        if rec.attributes is not None:
            out[i] = rec.attributes
    return out


def relabel(pids: Sequence[int]) -> tuple[np.ndarray, dict[int, int]]:
    """Map person ids to contiguous labels 0..C-1 (sorted by id), e.g. for an ID-loss head.

    Returns:
        labels (N,) int64 and the mapping pid -> label.
    """
    mapping = {pid: i for i, pid in enumerate(sorted(set(int(p) for p in pids)))}
    return np.array([mapping[int(p)] for p in pids], dtype=np.int64), mapping
