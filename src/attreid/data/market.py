"""Reader for the standard Market-1501 release with Market-1501_Attribute.

Market-1501 (Zheng et al., ICCV 2015): 32,668 boxes of 1,501 identities from 6 cameras;
``bounding_box_train`` 12,936 images / 751 ids, ``bounding_box_test`` 19,732 images (750 ids +
distractors 0000 + junk -1), ``query`` 3,368 images / 750 ids. File names
``PPPP_cCsS_FFFFFF_BB.jpg``: person, camera, sequence, frame, box.
Market-1501_Attribute (Lin et al., Pattern Recognition 2019): ``market_attribute.mat`` holds one
struct with ``train`` (751 ids) and ``test`` (750 ids) sub-structs of age + 26 binary attributes
and ``image_index`` (the ids). The two list their fields in different orders: we index by name.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import scipy.io

from attreid.data.io import list_images, warn_ignored
from attreid.data.records import DISTRACTOR_ID, DataError, Dataset, ImageRecord, collect
from attreid.schema import RAW_ATTRIBUTES, AttributeCodeError, raw_to_tasks

FOLDERS = {"train": "bounding_box_train", "gallery": "bounding_box_test", "query": "query"}
ATTRIBUTE_FILE = "market_attribute.mat"
# The official release names 24 test/query files (identity 1488 and a few distractors/junk seen
# by the same cameras) "...jpg.jpg"; they are valid images and are read like the others.
_NAME = re.compile(r"^(-1|\d{4})_c(\d)s(\d+)_(\d{6})_(\d{2})\.jpg(\.jpg)?$", re.ASCII)

Labels = tuple[int, ...]


def parse_market_name(path: Path) -> tuple[int, int]:
    """Return (person id, camera id) of a ``PPPP_cCsS_FFFFFF_BB.jpg`` file name."""
    match = _NAME.match(path.name)
    if match is None:
        raise DataError(
            f"{path}: file name does not parse, expected PPPP_cCsS_FFFFFF_BB.jpg "
            "(e.g. 0002_c1s1_000451_03.jpg, or -1_... for junk)"
        )
    pid, cam = int(match.group(1)), int(match.group(2))
    if not 1 <= cam <= 6:
        raise DataError(f"{path}: camera {cam} outside 1..6")
    return pid, cam


def load_market_attributes(path: Path) -> dict[str, dict[int, Labels]]:
    """Read ``market_attribute.mat``: split ('train'/'test') -> person id -> 12 task labels."""
    if not path.is_file():
        raise DataError(f"{path}: attribute file not found (expected Market-1501_Attribute's "
                        f"{ATTRIBUTE_FILE} in the dataset root)")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises many types for corrupt files
        raise DataError(f"{path}: cannot read MATLAB file ({exc})") from exc
    if "market_attribute" not in mat:
        raise DataError(f"{path}: no variable 'market_attribute' (found {_user_keys(mat)})")
    root = mat["market_attribute"]
    names = root.dtype.names or ()
    result = {}
    for split in ("train", "test"):
        if split not in names:
            raise DataError(f"{path}: struct market_attribute has no field {split!r} "
                            f"(found {list(names)})")
        result[split] = _read_split(_only(root, f"{path}: market_attribute")[split],
                                    f"{path}:{split}")
    return result


def _only(struct: np.ndarray, where: str) -> np.void:
    """The single element of a 1x1 MATLAB struct array."""
    if struct.size != 1:
        raise DataError(f"{where}: expected a 1x1 struct, found a struct array of shape "
                        f"{struct.shape}")
    return struct.ravel()[0]


def _user_keys(mat: dict) -> list[str]:
    return [k for k in mat if not k.startswith("__")]


def _read_split(struct: np.ndarray, where: str) -> dict[int, Labels]:
    names = struct.dtype.names or ()
    missing = [n for n in RAW_ATTRIBUTES + ("image_index",) if n not in names]
    if missing:
        raise DataError(f"{where}: missing fields {missing}")
    cell = _only(struct, where)
    ids = [_parse_index(v, where) for v in np.asarray(cell["image_index"]).ravel()]
    columns = {}
    for name in RAW_ATTRIBUTES:
        values = np.asarray(cell[name]).ravel()
        if values.size != len(ids):
            raise DataError(f"{where}: field {name!r} has {values.size} values, "
                            f"image_index has {len(ids)}")
        columns[name] = values
    if len(set(ids)) != len(ids):
        raise DataError(f"{where}: image_index lists an identity twice")

    def decode(i: int) -> Labels:
        who = f"{where} identity {ids[i]:04d}"
        raw = {name: _code(columns[name][i], f"{who}: attribute {name!r}")
               for name in RAW_ATTRIBUTES}
        try:
            return tuple(int(v) for v in raw_to_tasks(raw, who))
        except AttributeCodeError as exc:
            raise DataError(str(exc)) from None

    return dict(zip(ids, collect(range(len(ids)), decode)))


def _unwrap(value: object) -> np.ndarray:
    """A MATLAB value as an array, out of its (nested) 1x1 cells."""
    array = np.asarray(value)
    while array.dtype == object and array.size == 1:
        array = np.asarray(array.ravel()[0])
    return array


def _integer(value: object) -> int | None:
    """An integer from a MATLAB value (a number, a 1-element array/cell or a digit string);
    None when it is not one (NaN, 1.5, text, an empty or longer array)."""
    array = _unwrap(value)
    if array.size != 1:
        return None
    item = array.ravel()[0].item()
    if array.dtype.kind in "US":
        text = item.decode("latin-1") if isinstance(item, bytes) else item
        text = text.strip()
        return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None
    if array.dtype.kind in "biu":
        return int(item)
    if array.dtype.kind == "f" and np.isfinite(item) and float(item).is_integer():
        return int(item)
    return None


def _code(value: object, where: str) -> int:
    code = _integer(value)
    if code is None:
        raise DataError(f"{where} has value {_show(value)}, expected an integer code")
    return code


def _show(value: object) -> str:
    array = _unwrap(value)
    text = repr(array.ravel()[0].item() if array.size == 1 else array.tolist())
    return text if len(text) <= 40 else text[:37] + "..."


def _parse_index(value: object, where: str) -> int:
    pid = _integer(value)
    if pid is None:
        raise DataError(f"{where}: image_index entry {_show(value)} is not a person id")
    return pid


def _read_folder(folder: Path, attributes: dict[int, Labels], split: str) -> list[ImageRecord]:
    images, others = list_images(folder)
    warn_ignored(folder, others)
    if not images:
        raise DataError(f"{folder}: no images found")
    return collect(images, lambda path: _record(path, attributes, split))


def _record(path: Path, attributes: dict[int, Labels], split: str) -> ImageRecord:
    pid, cam = parse_market_name(path)
    attrs = None
    if pid > DISTRACTOR_ID:
        if pid not in attributes:
            raise DataError(f"{path}: identity {pid:04d} has no attributes in the "
                            f"'{split}' part of {ATTRIBUTE_FILE}")
        attrs = attributes[pid]
    elif split == "train":
        raise DataError(f"{path}: distractor/junk id {pid} in the training folder")
    return ImageRecord(path=path, pid=pid, camid=cam, attributes=attrs)


def read_market(root: Path | str) -> Dataset:
    """Read a dataset in the standard Market-1501 layout (see module docstring).

    Every train identity must have attributes in the ``train`` struct, every query/gallery
    identity > 0 in the ``test`` struct; distractors (0) and junk (-1) carry none.
    """
    root = Path(root)
    attributes = load_market_attributes(root / ATTRIBUTE_FILE)
    parts = [("train", "train"), ("query", "test"), ("gallery", "test")]
    train, query, gallery = collect(
        parts, lambda p: _read_folder(root / FOLDERS[p[0]], attributes[p[1]], p[1]))
    _warn_unused(root, attributes["train"], train, "train")
    _warn_unused(root, attributes["test"], query + gallery, "test")
    return Dataset(root=root, layout="market", train=train, query=query, gallery=gallery)


def _warn_unused(root: Path, attributes: dict[int, Labels], records: list[ImageRecord],
                 split: str) -> None:
    seen = {r.pid for r in records}
    unused = sorted(set(attributes) - seen)
    if unused:
        warnings.warn(f"{root / ATTRIBUTE_FILE}: {len(unused)} '{split}' identities have "
                      f"attributes but no images (e.g. {unused[:3]})", stacklevel=3)
