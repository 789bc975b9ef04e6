"""Dataset summary (counts, attribute class frequencies) and a full check of every record."""

from __future__ import annotations

import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from attreid.data.io import read_image
from attreid.data.load import load_dataset
from attreid.data.records import DISTRACTOR_ID, JUNK_ID, DataError, Dataset, ImageRecord
from attreid.schema import MISSING, TASKS


@dataclass(frozen=True)
class SplitSummary:
    """Counts of one split. ``identities`` excludes distractors, junk and unlabelled images."""

    name: str
    images: int
    identities: int
    cameras: tuple[int, ...]
    distractors: int
    junk: int
    unlabelled: int


@dataclass(frozen=True)
class Summary:
    """What ``attreid data summary`` shows.

    ``attribute_counts[split][task]`` counts identities per class (index = class, as in
    :data:`attreid.schema.TASKS`); identities with the task unknown are left out.
    """

    root: Path
    layout: str
    splits: tuple[SplitSummary, ...]
    attribute_counts: dict[str, dict[str, list[int]]]
    val_ids: int
    duplicates: int


def _split_summary(name: str, records: Sequence[ImageRecord]) -> SplitSummary:
    pids = [r.pid for r in records]
    return SplitSummary(
        name=name,
        images=len(records),
        identities=len({p for p in pids if p is not None and p > DISTRACTOR_ID}),
        cameras=tuple(sorted({r.camid for r in records if r.camid is not None})),
        distractors=sum(p == DISTRACTOR_ID for p in pids),
        junk=sum(p == JUNK_ID for p in pids),
        unlabelled=sum(p is None for p in pids),
    )


def _attribute_counts(records: Sequence[ImageRecord]) -> dict[str, list[int]]:
    per_id = {r.pid: r.attributes for r in records if r.attributes is not None}
    counts = {}
    for t, task in enumerate(TASKS):
        c = Counter(labels[t] for labels in per_id.values() if labels[t] != MISSING)
        counts[task.name] = [c.get(k, 0) for k in range(task.num_classes)]
    return counts


def summarize(dataset: Dataset) -> Summary:
    """Summarise a loaded dataset: counts per split and identity-level attribute frequencies."""
    splits = {"train": dataset.train, "query": dataset.query, "gallery": dataset.gallery}
    attribute_counts = {"train": _attribute_counts(dataset.train)}
    test = dataset.query + dataset.gallery
    if any(r.attributes is not None for r in test):
        attribute_counts["test"] = _attribute_counts(test)
    return Summary(
        root=dataset.root,
        layout=dataset.layout,
        splits=tuple(_split_summary(n, r) for n, r in splits.items()),
        attribute_counts=attribute_counts,
        val_ids=len(dataset.val_ids),
        duplicates=len(dataset.duplicates),
    )


def _decode(record: ImageRecord) -> str | None:
    try:
        img = read_image(record.path)
    except DataError as exc:
        return str(exc)
    if img.width < 2 or img.height < 2:
        return f"{record.path}: image is {img.width}x{img.height}, too small to use"
    return None


def check_dataset(root: Path | str, layout: str = "auto", workers: int = 4,
                  progress: Callable[[int, int], None] | None = None
                  ) -> tuple[list[str], list[str]]:
    """Load a dataset, validate every record and decode every image.

    Args:
        progress: called with (images done, images in all) after each image.

    Returns:
        (problems, warnings): each problem names its file or row; an empty list means valid.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            dataset = load_dataset(root, layout)
        except DataError as exc:
            return exc.problems, [str(w.message) for w in caught]
    records = dataset.train + dataset.query + dataset.gallery
    problems = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, problem in enumerate(pool.map(_decode, records), start=1):
            if problem:
                problems.append(problem)
            if progress:
                progress(i, len(records))
    return problems, [str(w.message) for w in caught]
