"""Property-based tests of the readers on random and malformed input (hypothesis).

Every case either loads correctly or raises :class:`DataError` naming the file (and the line or
identity where there is one); any other exception fails the test. Runs are derandomized, so
``make test`` is reproducible; ``ATTREID_FUZZ_EXAMPLES=N`` runs N random examples per test
instead (the counts in docs/RELIABILITY.md).
"""

from __future__ import annotations

import csv
import io
import os
import re
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import scipy.io
from conftest import require
from helpers import labels_for, make_market, write_course_csv, write_jpeg
from PIL import Image

from attreid.data.course import read_annotations
from attreid.data.custom import read_custom
from attreid.data.inspect import check_dataset
from attreid.data.io import read_csv, read_image
from attreid.data.load import load_dataset
from attreid.data.market import ATTRIBUTE_FILE, load_market_attributes, parse_market_name
from attreid.data.records import DataError
from attreid.schema import CSV_COLUMNS, RAW_ATTRIBUTES, raw_to_tasks, tasks_to_raw

hypothesis = require("hypothesis", "the property-based tests need hypothesis (attreid[dev])")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_EXAMPLES = int(os.environ.get("ATTREID_FUZZ_EXAMPLES", "0"))


def fuzz(examples: int = 30) -> Callable:
    """Hypothesis settings of this file: modest and derandomized unless ATTREID_FUZZ_EXAMPLES."""
    return settings(max_examples=_EXAMPLES or examples, deadline=None,
                    derandomize=not _EXAMPLES, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (pytest's tmp_path is one folder per test function)."""
    with tempfile.TemporaryDirectory(prefix="attreid-fuzz-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield Path(tmp)


def loads_or_names(path: Path, fn: Callable[[], object]) -> object | None:
    """Run ``fn``: its result, or None after a DataError that names ``path``; anything else
    propagates (and fails the test)."""
    try:
        return fn()
    except DataError as exc:
        assert str(path) in str(exc), f"the error does not name {path}: {exc}"
        assert exc.problems and all(str(path) in p or "problems" in p for p in exc.problems)
        return None


# File and folder names: any printable unicode, spaces included; no separators, no NUL.
_NAME_CHARS = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\")
names = st.text(_NAME_CHARS, min_size=1, max_size=24).filter(
    lambda s: s not in (".", "..") and len(s.encode()) < 200)
spaced_names = st.builds(lambda a, b: f"{a} {b}", names, names)


# --- images ------------------------------------------------------------------------------------

# Modes and the formats that store them (PIL's writers), with a fill value per mode.
SAVABLE = {
    "1": ["PNG", "TIFF", "BMP", "GIF"], "L": ["PNG", "TIFF", "JPEG", "BMP", "WEBP", "GIF"],
    "LA": ["PNG", "TIFF", "WEBP"], "P": ["PNG", "TIFF", "BMP", "GIF"],
    "RGB": ["PNG", "TIFF", "JPEG", "BMP", "WEBP", "GIF"], "RGBA": ["PNG", "TIFF", "WEBP"],
    "CMYK": ["TIFF", "JPEG"], "I;16": ["PNG", "TIFF"], "I;16B": ["TIFF"], "I": ["TIFF"],
    "F": ["TIFF"], "YCbCr": ["TIFF", "JPEG"],
}
_SIXTEEN_BIT = ("I;16", "I;16B", "I")
# Sizes: 1x1, very wide, very tall, ordinary.
sizes = st.one_of(st.just((1, 1)), st.tuples(st.integers(1, 4000), st.integers(1, 3)),
                  st.tuples(st.integers(1, 3), st.integers(1, 4000)),
                  st.tuples(st.integers(1, 80), st.integers(1, 80)))


def _image(mode: str, size: tuple[int, int], value: int) -> Image.Image:
    if mode in ("I;16", "I;16B"):
        pixels = np.full((size[1], size[0]), value * 257, dtype=">u2" if mode == "I;16B" else "<u2")
        return Image.frombytes(mode, size, pixels.tobytes())
    if mode == "I":
        return Image.fromarray(np.full((size[1], size[0]), value * 257, dtype=np.int32))
    fill: object = value
    if mode in ("RGB", "YCbCr"):
        fill = (value, value, value)
    elif mode in ("RGBA", "CMYK"):
        fill = (value, value, value, 255)
    elif mode == "LA":
        fill = (value, 255)
    return Image.new(mode, size, fill)


def _encoded(mode: str, fmt: str, size: tuple[int, int] = (37, 23), value: int = 99) -> bytes:
    buffer = io.BytesIO()
    _image(mode, size, value).save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def image_files(draw) -> tuple[str, str, tuple[int, int], int]:
    mode = draw(st.sampled_from(sorted(SAVABLE)))
    return mode, draw(st.sampled_from(SAVABLE[mode])), draw(sizes), draw(st.integers(0, 255))


@fuzz(60)
@given(image_files(), spaced_names, st.sampled_from([".jpg", ".png", ".JPG", ".webp"]))
def test_any_mode_and_size_decodes_to_rgb(spec, name, suffix):
    """Grayscale, LA, palette, RGBA, CMYK, 16-bit, float; 1x1 and 4000-wide; unicode names
    with spaces (the suffix need not match the format)."""
    mode, fmt, size, value = spec
    with scratch() as tmp:
        path = tmp / name / f"{name}{suffix}"
        path.parent.mkdir()
        path.write_bytes(_encoded(mode, fmt, size, value))
        img = read_image(path)
        assert img.mode == "RGB" and img.size == size
        if mode in _SIXTEEN_BIT or (mode in ("L", "RGB", "RGBA", "LA")
                                    and fmt in ("PNG", "TIFF", "BMP")):
            # lossless: 16-bit v*257 keeps its high byte v; 8-bit formats keep v
            assert np.asarray(img)[0, 0].tolist() == [value] * 3, (mode, fmt)


def test_big_endian_16_bit_tiff_is_scaled_not_refused(tmp_path):
    """Found by the fuzzer: PIL's point() refused I;16B (16-bit TIFF written big-endian)."""
    path = tmp_path / "be16.tif"
    values = np.array([[0, 4000, 65535]], dtype=">u2")
    Image.frombytes("I;16B", (3, 1), values.tobytes()).save(path)
    assert np.asarray(read_image(path))[0, :, 0].tolist() == [0, 15, 255]


_SOURCES = [("JPEG", "RGB"), ("JPEG", "CMYK"), ("PNG", "RGBA"), ("PNG", "I;16"), ("GIF", "P"),
            ("TIFF", "I;16B"), ("BMP", "RGB"), ("WEBP", "RGB")]


@st.composite
def damaged_images(draw) -> bytes:
    fmt, mode = draw(st.sampled_from(_SOURCES))
    data = _encoded(mode, fmt)
    how = draw(st.sampled_from(["truncate", "flip", "overwrite", "random", "empty"]))
    if how == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if how == "random":
        return draw(st.binary(max_size=2048))
    if how == "empty":
        return b""
    damaged = bytearray(data)
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(damaged) - 1))
        if how == "flip":
            damaged[at] ^= 1 << draw(st.integers(0, 7))
        else:
            damaged[at:at + 4] = draw(st.binary(min_size=4, max_size=4))
    return bytes(damaged)


@fuzz(150)
@given(damaged_images())
def test_damaged_images_decode_or_raise_data_error(data):
    """Truncated, bit-flipped, overwritten, random and zero-byte files."""
    with scratch() as tmp:
        path = tmp / "crop ü.jpg"
        path.write_bytes(data)
        img = loads_or_names(path, lambda: read_image(path))
        assert img is None or img.mode == "RGB"


def test_truncated_jpeg_and_zero_byte_files_are_named(tmp_path):
    jpeg = _encoded("RGB", "JPEG", (64, 128))
    for name, data in [("cut.jpg", jpeg[: len(jpeg) // 2]), ("empty.jpg", b""),
                       ("text.jpg", b"not an image")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(DataError, match=f"{name}: cannot decode image"):
            read_image(tmp_path / name)
    with pytest.raises(DataError, match="image file not found"):
        read_image(tmp_path / "missing.jpg")
    with pytest.raises(DataError, match="cannot decode image"):
        read_image(tmp_path)  # a folder


# --- CSV files ---------------------------------------------------------------------------------

@fuzz(60)
@given(st.one_of(st.binary(max_size=600),
                 st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
                 st.lists(st.lists(st.text(st.characters(blacklist_categories=("Cs",)),
                                           max_size=8), max_size=5), max_size=6)
                 .map(lambda rows: "\n".join(",".join(r) for r in rows).encode())))
def test_random_csv_bytes_parse_or_raise_data_error(data):
    """Random bytes, text with NUL/quotes/BOMs/surrogates, ragged rows."""
    with scratch() as tmp:
        path = tmp / "labels ü.csv"
        path.write_bytes(data)
        result = loads_or_names(path, lambda: read_csv(path))
        if result is not None:
            header, rows = result
            assert all(list(row) == header for row in rows)


_BAD_CELLS = st.sampled_from(["", "x", "0", "3", "-1", "1.0", "١", "２", " ", "9" * 5000,
                              "nan", "1e3", "\u00e9", "\x00", '"'])


@fuzz(50)
@given(ids=st.lists(st.integers(1, 9999), min_size=1, max_size=6, unique=True),
       bad=st.one_of(st.none(), st.tuples(st.integers(0, 5), st.sampled_from(CSV_COLUMNS[1:]),
                                          _BAD_CELLS)),
       blanks=st.lists(st.integers(0, 6), max_size=3))
def test_course_csv_bad_cell_is_named_by_line(ids, bad, blanks):
    """A valid annotations_train.csv with blank lines and at most one bad cell: loads with the
    right labels, or raises naming the file line of the bad cell (blank lines counted)."""
    with scratch() as tmp:
        path = tmp / "annotations_train.csv"
        overrides = {}
        if bad is not None:
            row, column, value = bad
            overrides = {ids[row % len(ids)]: {column: value}}
        write_course_csv(path, ids, overrides=overrides)
        lines = path.read_text().splitlines(keepends=True)
        for at in sorted(blanks, reverse=True):
            lines.insert(min(at + 1, len(lines)), "\r\n")
        path.write_text("".join(lines))
        line_of = {}
        for lineno, text in enumerate(path.read_text().splitlines(), start=1):
            if text.strip() and lineno > 1:
                line_of[int(text.split(",")[0])] = lineno
        result = loads_or_names(path, lambda: read_annotations(path))
        if result is not None:  # the "bad" cell may be a valid code (age 3)
            labels, order = result
            assert order == list(ids)
            for pid in ids:
                raw = {**tasks_to_raw(labels_for(pid)),
                       **{k: int(v) for k, v in overrides.get(pid, {}).items()}}
                assert labels[pid] == tuple(raw_to_tasks(raw))
        else:
            assert bad is not None, "a valid file was refused"
            message = str(pytest.raises(DataError, read_annotations, path).value)
            assert f"line {line_of[ids[bad[0] % len(ids)]]}" in message, message


def test_course_line_numbers_count_blank_lines(tmp_path):
    """Found by the fuzzer: rows after a blank line were reported one line too early."""
    path = tmp_path / "annotations_train.csv"
    write_course_csv(path, [2, 3], overrides={3: {"hat": "7"}})
    header, first, second = path.read_text().splitlines()
    path.write_text(f"{header}\n{first}\n\n{second}\n")
    with pytest.raises(DataError, match="line 4"):
        read_annotations(path)


# --- the custom layout -------------------------------------------------------------------------

_IMAGE_CELLS = st.one_of(
    names.map(lambda n: f"img/{n}.jpg"), spaced_names.map(lambda n: f"{n}.png"),
    st.sampled_from(["x" * 300 + ".jpg", "/etc/passwd", "../outside.jpg", "img", "", "img/",
                     "a\x00b.jpg", "~/x.jpg", "img/../img/ok ü.jpg", "img/ok ü.jpg"]))


@fuzz(50)
@given(rows=st.lists(st.tuples(_IMAGE_CELLS, st.sampled_from(["1", "2", "-1", "0", "x", ""]),
                               st.sampled_from(["train", "query", "gallery", "", "test"]),
                               st.sampled_from(["", "1", "2", "3", "yes"])),
                     min_size=1, max_size=5),
       root_name=spaced_names)
def test_custom_labels_with_hostile_paths(rows, root_name):
    """labels.csv rows naming long, absolute, escaping, unicode or missing image paths."""
    with scratch() as tmp:
        root = tmp / root_name
        write_jpeg(root / "img" / "ok ü.jpg")
        write_jpeg(tmp / "outside.jpg")
        with (root / "labels.csv").open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "pid", "split", "age"])
            for image, pid, split, age in rows:
                if not image:
                    continue
                writer.writerow([image.replace("\x00", ""), pid, split, age])
                if image.startswith("img/") and image.endswith(".jpg") and "/.." not in image \
                        and "ok ü" not in image:
                    write_jpeg(root / image)
        result = loads_or_names(root, lambda: read_custom(root))
        if result is not None:  # never a file from outside (e.g. /etc/passwd)
            for record in result.train + result.query + result.gallery:
                assert record.path.is_file()
                assert os.path.realpath(record.path).startswith(os.path.realpath(tmp))


def test_custom_long_and_absolute_image_paths_are_data_errors(tmp_path):
    """Found by the fuzzer: a 300-character name raised OSError (name too long); an absolute
    path silently read a file outside the dataset."""
    write_jpeg(tmp_path / "a.jpg")
    for image, message in [("x" * 300 + ".jpg", "not found under"),
                           (str(tmp_path / "a.jpg"), "absolute path")]:
        (tmp_path / "labels.csv").write_text(f"image,pid\n{image},1\n")
        with pytest.raises(DataError, match=message):
            read_custom(tmp_path)


# --- market_attribute.mat ----------------------------------------------------------------------

_BAD_CODES = [np.nan, 1.5, np.inf, -1, 0, 5, "x", "", np.array([1, 2]), np.array([])]


@st.composite
def attribute_structs(draw) -> tuple[dict, set[str], bool]:
    """A split struct of 3 identities: fields in a random order, some dropped, one value maybe
    damaged, numbers stored as uint8/double/int16/cells. Returns (struct, dropped, damaged)."""
    ids = [2, 7, 10]
    order = draw(st.permutations(list(RAW_ATTRIBUTES) + ["image_index"]))
    dropped = set(draw(st.lists(st.sampled_from(order), max_size=2)))
    dtype = draw(st.sampled_from([np.uint8, np.float64, np.int16, object]))
    struct: dict = {}
    raws = [tasks_to_raw(labels_for(p)) for p in ids]
    for name in order:
        if name in dropped:
            continue
        if name == "image_index":
            as_numbers = draw(st.booleans())
            index = np.empty((1, len(ids)), dtype=object)
            for i, p in enumerate(ids):
                index[0, i] = float(p) if as_numbers else f"{p:04d}"
            struct[name] = index
            continue
        values = np.empty((1, len(ids)), dtype=object) if dtype is object else \
            np.zeros((1, len(ids)), dtype=dtype)
        for i, raw in enumerate(raws):
            values[0, i] = raw[name]
        struct[name] = values
    damaged = False
    if draw(st.booleans()):
        name = draw(st.sampled_from([n for n in RAW_ATTRIBUTES if n not in dropped] or ["age"]))
        if name in struct:
            bad = draw(st.sampled_from(_BAD_CODES))
            values = struct[name].astype(object)
            values[0, draw(st.integers(0, 2))] = bad
            struct[name] = values
            damaged = True
    return struct, dropped, damaged


@fuzz(50)
@given(train=attribute_structs(), wrap=st.sampled_from(["ok", "no_root", "no_test", "empty"]))
def test_market_attribute_file_with_missing_reordered_or_damaged_fields(train, wrap):
    struct, dropped, damaged = train
    with scratch() as tmp:
        path = tmp / "dä ta" / ATTRIBUTE_FILE
        path.parent.mkdir()
        content = {"market_attribute": {"train": struct, "test": struct}}
        if wrap == "no_root":
            content = {"attributes": content["market_attribute"]}
        elif wrap == "no_test":
            content = {"market_attribute": {"train": struct}}
        elif wrap == "empty":
            content = {"market_attribute": np.zeros((0, 0), dtype=[("train", object),
                                                                   ("test", object)])}
        scipy.io.savemat(str(path), content)
        result = loads_or_names(path, lambda: load_market_attributes(path))
        if result is not None:
            assert wrap == "ok" and not dropped and not damaged
            assert result["train"] == {p: tuple(labels_for(p)) for p in (2, 7, 10)}


@fuzz(40)
@given(st.one_of(st.binary(max_size=400), st.just(b"")))
def test_market_attribute_file_with_random_bytes(data):
    with scratch() as tmp:
        path = tmp / ATTRIBUTE_FILE
        path.write_bytes(data)
        loads_or_names(path, lambda: load_market_attributes(path))


def test_market_attribute_values_that_are_not_codes_are_named(tmp_path):
    """Found by the fuzzer: NaN raised ValueError, a cell TypeError, an empty struct
    IndexError; 1.5 was silently truncated to 1."""
    ids = np.array([["0002"]], dtype=object)
    path = tmp_path / "m.mat"
    for bad, shown in [(np.nan, "nan"), (1.5, "1.5"), (np.array([1, 2]), "[[1, 2]]")]:
        split = {n: np.array([[1]], dtype=np.uint8) for n in RAW_ATTRIBUTES}
        split["age"] = np.empty((1, 1), dtype=object)
        split["age"][0, 0] = bad
        split["image_index"] = ids
        scipy.io.savemat(str(path), {"market_attribute": {"train": split, "test": split}})
        with pytest.raises(DataError, match=re.escape(
                f"identity 0002: attribute 'age' has value {shown}, expected an integer code")):
            load_market_attributes(path)
    scipy.io.savemat(str(path), {"market_attribute": np.zeros((0, 0), dtype=[("train", object),
                                                                             ("test", object)])})
    with pytest.raises(DataError, match="expected a 1x1 struct"):
        load_market_attributes(path)


# --- file names and whole datasets -------------------------------------------------------------

@fuzz(60)
@given(st.one_of(
    names, st.from_regex(r"\A(-1|\d{4})_c\d{1,2}s\d+_\d{6}_\d{2}\.jpg(\.jpg)?\Z"),
    st.from_regex(r"\A[0-9\u0660-\u0669]{4}_c[0-9\u0660-\u0669]s1_000001_01\.jpg\Z")))
def test_market_file_names_parse_or_raise(name):
    path = Path("folder with space") / name
    parsed = loads_or_names(path, lambda: parse_market_name(path))
    if parsed is not None:
        pid, cam = parsed
        assert name.isascii() and 1 <= cam <= 6 and name.startswith(str(pid).zfill(4)
                                                                    if pid >= 0 else "-1_")


@fuzz(25)
@given(root_name=spaced_names,
       damage=st.lists(st.tuples(st.sampled_from(["bounding_box_train", "query",
                                                  "bounding_box_test"]),
                                 st.sampled_from(["zero", "truncated", "text", "gray", "cmyk",
                                                  "rgba", "16bit", "wide"])),
                       max_size=3))
def test_market_dataset_under_unicode_root_with_odd_images(root_name, damage):
    """A Market-1501 layout in a folder with unicode and spaces whose crops are replaced by
    zero-byte, truncated, non-image, grayscale, CMYK, RGBA, 16-bit or 1000x1 files: it loads,
    and `data check` lists exactly the undecodable ones, each by name."""
    with scratch() as tmp:
        root = make_market(tmp / root_name)
        expected_bad = set()
        for folder, kind in damage:
            path = sorted((root / folder).glob("*.jpg"))[0]
            replacement = {
                "zero": b"", "text": "ü not a jpeg".encode(),
                "truncated": _encoded("RGB", "JPEG", (64, 128))[:200],
                "gray": _encoded("L", "JPEG"), "cmyk": _encoded("CMYK", "JPEG"),
                "rgba": _encoded("RGBA", "PNG"), "16bit": _encoded("I;16", "PNG"),
                "wide": _encoded("RGB", "PNG", (1000, 2)),
            }[kind]
            path.write_bytes(replacement)
            if kind in ("zero", "text", "truncated"):
                expected_bad.add(path)
            else:
                expected_bad.discard(path)
        dataset = load_dataset(root)
        assert len(dataset.train) == 6
        problems, _ = check_dataset(root, workers=2)
        assert len(problems) == len(expected_bad), problems
        for path in expected_bad:
            assert sum(f"{path}: cannot decode image" in p for p in problems) == 1, problems
