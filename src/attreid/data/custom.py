"""Reader for a custom layout: a folder of images plus a CSV of labels.

Layout::

    ROOT/labels.csv        one row per image
    ROOT/attributes.csv    optional, one row per identity
    ROOT/<any sub-folders>/<images>

``labels.csv`` columns:

* ``image`` (required): path of the image relative to ROOT;
* ``pid`` (required): integer person id (0 = distractor, -1 = junk, as in Market-1501);
* ``camid`` (optional): integer camera id;
* ``split`` (optional): ``train``, ``query`` or ``gallery`` (default ``train``);
* any subset of the 27 raw attribute columns of :data:`attreid.schema.RAW_ATTRIBUTES`
  (age 1..4, others 1/2); an empty cell means unknown.

``attributes.csv`` (optional) gives the same attribute columns per identity (column ``pid``).
Attributes are identity-level: every image of one identity must carry the same values, and a value
in ``labels.csv`` must agree with ``attributes.csv``. A colour group (8 ``up*`` or 9 ``down*``
columns) is given whole or not at all. Tasks left unknown get the label ``MISSING`` and are
ignored by losses and metrics.

Without a ``camid`` column every record has ``camid=None``; evaluation then applies no
same-camera filter: every gallery image of the query's identity is a match (the query image itself
is never in the gallery of a custom dataset unless listed there twice).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from attreid.data.io import find_images, parse_int, read_csv_lines
from attreid.data.records import DataError, Dataset, ImageRecord, collect
from attreid.schema import RAW_ATTRIBUTES, AttributeCodeError, raw_to_tasks

LABELS_FILE = "labels.csv"
ATTRIBUTES_FILE = "attributes.csv"
SPLITS = ("train", "query", "gallery")
_KNOWN = {"image", "pid", "camid", "split"} | set(RAW_ATTRIBUTES)

Raw = dict[str, int]


def _raw_from_row(row: dict[str, str], where: str) -> Raw:
    return {c: parse_int(v, where, f"column {c!r}") for c, v in row.items()
            if c in RAW_ATTRIBUTES and v != ""}


def _merge(target: dict[int, Raw], pid: int, raw: Raw, where: str) -> None:
    known = target.setdefault(pid, {})
    for column, value in raw.items():
        if known.get(column, value) != value:
            raise DataError(f"{where}: identity {pid} has {column}={value}, but another row gave "
                            f"{column}={known[column]} (attributes are per identity)")
        known[column] = value


def _read_attributes_csv(path: Path) -> dict[int, Raw]:
    header, rows = read_csv_lines(path)
    if "pid" not in header:
        raise DataError(f"{path}: missing column 'pid'")
    extra = [c for c in header if c not in RAW_ATTRIBUTES and c != "pid"]
    if extra:
        raise DataError(f"{path}: unknown columns {extra}; expected pid and attribute columns "
                        f"from {list(RAW_ATTRIBUTES)}")
    out: dict[int, Raw] = {}
    for lineno, row in rows:
        where = f"{path}, line {lineno}"
        pid = parse_int(row["pid"], where, "pid")
        if pid in out:
            raise DataError(f"{where}: identity {pid} appears twice")
        out[pid] = _raw_from_row(row, where)
    return out


def _check_header(path: Path, header: list[str]) -> None:
    missing = [c for c in ("image", "pid") if c not in header]
    if missing:
        raise DataError(f"{path}: missing required columns {missing}")
    extra = [c for c in header if c not in _KNOWN]
    if extra:
        raise DataError(f"{path}: unknown columns {extra}; expected image, pid, camid, split "
                        f"and attribute columns from {list(RAW_ATTRIBUTES)}")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name longer than the file system allows
        return False


def _parse_rows(root: Path, path: Path, rows: list[tuple[int, dict[str, str]]],
                attributes: dict[int, Raw]) -> list[tuple[str, Path, int, int | None]]:
    seen: dict[Path, int] = {}

    def parse(item: tuple[int, dict[str, str]]) -> tuple[str, Path, int, int | None]:
        lineno, row = item
        where = f"{path}, line {lineno}"
        if Path(row["image"]).is_absolute():
            raise DataError(f"{where}: image {row['image']!r} is an absolute path; expected a "
                            f"path relative to {root}")
        image = root / row["image"]
        if not row["image"] or not _is_file(image):
            raise DataError(f"{where}: image {row['image']!r} not found under {root}")
        if image in seen:
            raise DataError(f"{where}: image {row['image']!r} already listed on line {seen[image]}")
        seen[image] = lineno
        split = row.get("split") or "train"
        if split not in SPLITS:
            raise DataError(f"{where}: split {split!r}, expected one of {SPLITS}")
        pid = parse_int(row["pid"], where, "pid")
        cam = parse_int(row["camid"], where, "camid") if row.get("camid") else None
        _merge(attributes, pid, _raw_from_row(row, where), where)
        return split, image, pid, cam

    return collect(rows, parse)


def _labels(attributes: dict[int, Raw], where: Path) -> dict[int, tuple[int, ...] | None]:
    out: dict[int, tuple[int, ...] | None] = {}
    for pid, raw in attributes.items():
        try:
            out[pid] = tuple(int(v) for v in raw_to_tasks(raw, f"{where} identity {pid}")) \
                if raw else None
        except AttributeCodeError as exc:
            raise DataError(str(exc)) from None
    return out


def read_custom(root: Path | str) -> Dataset:
    """Read a dataset in the custom layout (see module docstring)."""
    root = Path(root)
    path = root / LABELS_FILE
    header, rows = read_csv_lines(path)
    _check_header(path, header)
    if not rows:
        raise DataError(f"{path}: no rows")
    attr_path = root / ATTRIBUTES_FILE
    attributes = _read_attributes_csv(attr_path) if attr_path.exists() else {}
    parsed = _parse_rows(root, path, rows, attributes)
    labels = _labels(attributes, path)
    splits: dict[str, list[ImageRecord]] = {s: [] for s in SPLITS}
    for split, image, pid, cam in parsed:
        splits[split].append(ImageRecord(image, pid, cam, labels.get(pid)))
    _warn_unlisted(root, {image for _, image, _, _ in parsed})
    return Dataset(root=root, layout="custom", **splits)


def _warn_unlisted(root: Path, listed: set[Path]) -> None:
    """One warning for the image files under ``root`` (linked folders included, each real file
    once: :func:`~attreid.data.io.find_images`) that no row of the labels file names."""
    named = {Path(os.path.realpath(p)) for p in listed}
    unlisted = [p for p in find_images(root).paths if p not in named]
    if unlisted:
        example = unlisted[0]
        real_root = Path(os.path.realpath(root))
        shown = example.relative_to(real_root) if example.is_relative_to(real_root) else example
        warnings.warn(f"{root}: {len(unlisted)} image(s) not listed in {LABELS_FILE} were "
                      f"ignored (e.g. {shown})", stacklevel=3)
