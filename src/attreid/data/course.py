"""Reader for the study's course layout of Market-1501 (``dataset.zip`` of the original study).

Layout::

    annotations_train.csv   one row per training identity (751, shuffled), 28 columns:
                            id + age + 26 binary attributes (see attreid.schema.CSV_COLUMNS)
    train/                  12,989 images PPPP_cC_NNNNNNNNN.jpg (identity, camera 1..6)
    test/                   19,679 unlabelled gallery images 000000.jpg ... (+ junk/distractors)
    queries/                2,248 unlabelled query images

The release's test/ also holds 9 files named ``NNNNNN(1).jpg`` that are byte-identical copies of
``NNNNNN.jpg``. They are excluded from the gallery (so a copy can never take a rank of its own) and
listed in :attr:`Dataset.duplicates` (copy -> original), so that per-image outputs can still
cover them. A ``(1)`` file whose bytes differ from its namesake is kept as an image of its own.

Validation split of the study: the identities of the first 225 CSV rows (:attr:`Dataset.val_ids`).
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from attreid.data.io import list_images, parse_int, read_csv_lines, warn_ignored
from attreid.data.records import DataError, Dataset, ImageRecord, collect
from attreid.schema import CSV_COLUMNS, RAW_ATTRIBUTES, AttributeCodeError, raw_to_tasks

CSV_FILE = "annotations_train.csv"
STUDY_VAL_ROWS = 225
_TRAIN_NAME = re.compile(r"^(\d{4})_c(\d)_(\d+)\.jpg$", re.ASCII)
_COPY_NAME = re.compile(r"^(.+)\((\d+)\)(\.[A-Za-z]+)$")

Labels = tuple[int, ...]


def read_annotations(path: Path) -> tuple[dict[int, Labels], list[int]]:
    """Read ``annotations_train.csv``.

    Returns:
        person id -> 12 task labels, and the ids in file order.

    Raises:
        DataError: missing/extra columns, a non-integer or out-of-range code, a repeated id.
    """
    header, rows = read_csv_lines(path)
    missing = [c for c in CSV_COLUMNS if c not in header]
    extra = [c for c in header if c not in CSV_COLUMNS]
    if missing or extra:
        raise DataError(f"{path}: columns do not match the study's 28 columns: "
                        f"missing {missing}, unexpected {extra}")
    if not rows:
        raise DataError(f"{path}: no rows")
    parsed = collect(rows, lambda item: _parse_row(path, *item))
    labels: dict[int, Labels] = {}
    for (lineno, _), (pid, row_labels) in zip(rows, parsed):
        if pid in labels:
            raise DataError(f"{path}, line {lineno}: identity {pid} appears twice")
        labels[pid] = row_labels
    return labels, [pid for pid, _ in parsed]


def _parse_row(path: Path, lineno: int, row: dict[str, str]) -> tuple[int, Labels]:
    where = f"{path}, line {lineno}"
    pid = parse_int(row["id"], where, "id")
    raw = {c: parse_int(row[c], where, f"column {c!r}") for c in RAW_ATTRIBUTES}
    try:
        return pid, tuple(int(v) for v in raw_to_tasks(raw, f"{where} (identity {pid})"))
    except AttributeCodeError as exc:
        raise DataError(str(exc)) from None


def parse_course_name(path: Path) -> tuple[int, int]:
    """Return (person id, camera id) of a ``PPPP_cC_NNNNNNNNN.jpg`` training file name."""
    match = _TRAIN_NAME.match(path.name)
    if match is None:
        raise DataError(f"{path}: file name does not parse, expected PPPP_cC_NNNNNNNNN.jpg "
                        "(e.g. 0002_c1_016620005.jpg)")
    cam = int(match.group(2))
    if not 1 <= cam <= 6:
        raise DataError(f"{path}: camera {cam} outside 1..6")
    return int(match.group(1)), cam


def _read_train(folder: Path, labels: dict[int, Labels]) -> list[ImageRecord]:
    images, others = list_images(folder)
    warn_ignored(folder, others)
    if not images:
        raise DataError(f"{folder}: no images found")
    return collect(images, lambda path: _train_record(path, labels))


def _train_record(path: Path, labels: dict[int, Labels]) -> ImageRecord:
    pid, cam = parse_course_name(path)
    if pid not in labels:
        raise DataError(f"{path}: identity {pid} has no row in {CSV_FILE}")
    return ImageRecord(path=path, pid=pid, camid=cam, attributes=labels[pid])


def _read_unlabelled(folder: Path) -> tuple[list[ImageRecord], dict[Path, Path]]:
    images, others = list_images(folder)
    warn_ignored(folder, others)
    if not images:
        raise DataError(f"{folder}: no images found")
    names = {p.name: p for p in images}
    duplicates = {}
    for path in images:
        match = _COPY_NAME.match(path.name)
        original = names.get(match.group(1) + match.group(3)) if match else None
        if original is not None and original.read_bytes() == path.read_bytes():
            duplicates[path] = original
    if duplicates:
        warnings.warn(f"{folder}: excluded {len(duplicates)} byte-identical duplicate(s) "
                      f"named NAME(1).jpg; see Dataset.duplicates", stacklevel=3)
    records = [ImageRecord(path=p, pid=None) for p in images if p not in duplicates]
    return records, duplicates


def read_course(root: Path | str) -> Dataset:
    """Read a dataset in the study's course layout (see module docstring)."""
    root = Path(root)
    labels, order = read_annotations(root / CSV_FILE)
    parts = [lambda: _read_train(root / "train", labels),
             lambda: _read_unlabelled(root / "test"),
             lambda: _read_unlabelled(root / "queries")]
    train, (gallery, duplicates), (query, query_dupes) = collect(parts, lambda read: read())
    unused = sorted(set(labels) - {r.pid for r in train})
    if unused:
        warnings.warn(f"{root / CSV_FILE}: {len(unused)} identities have no training images "
                      f"(e.g. {unused[:3]})", stacklevel=2)
    return Dataset(root=root, layout="course", train=train, query=query, gallery=gallery,
                   val_ids=tuple(order[:STUDY_VAL_ROWS]),
                   duplicates={**duplicates, **query_dupes})
