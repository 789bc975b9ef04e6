"""The attribute schema against a table typed by hand, independent of ``attreid.schema``.

The other reader tests write their .mat/.csv fixtures with ``attreid.schema.tasks_to_raw`` and read
them back with ``raw_to_tasks``: an error made the same way in both directions (gender 1/2, the
colour order, an age offset) passes all of them. Here every raw row, every expected task index and
every expected class name is a literal typed from the coding of Market-1501_Attribute (Lin et al.,
"Improving person re-identification by attribute and identity learning", Pattern Recognition 2019;
its README and ../shared/data/README.md):

    age      young(1) teenager(2) adult(3) old(4)
    backpack, bag, handbag, hat        no(1) yes(2)
    clothes  dress(1) pants(2)         down (lower-body length)  long(1) short(2)
    up (sleeve length) long(1) short(2) hair  short(1) long(2)    gender  male(1) female(2)
    colours, each no(1) yes(2):
        upblack upwhite upred uppurple upyellow upgray upblue upgreen
        downblack downwhite downpink downpurple downyellow downgray downblue downgreen downbrown

The 12 tasks (attreid's order): age, backpack, bag, handbag, clothes, down, up, hair, hat, gender,
upcolor (8 colours in the column order above, then multicolour = no colour set), downcolor (9
colours, then multicolour). Task indices are 0-based.

The files of the end-to-end tests are written here with the csv module and scipy.io.savemat from
the literal rows, in the layout of the real files (column order of the course CSV; the two struct
field orders and uint8 / cell-of-'NNNN' layout of the real market_attribute.mat), never with
attreid's writers or tests/helpers.py.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from attreid import schema
from attreid.data.load import load_dataset

# ---- the hand-typed table ------------------------------------------------------------------------

# Columns of the course layout's annotations_train.csv, in the file's order (as in the real
# ../shared/data/market1501-trento/annotations_train.csv header).
CSV_HEADER = [
    "id", "age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender",
    "upblack", "upwhite", "upred", "uppurple", "upyellow", "upgray", "upblue", "upgreen",
    "downblack", "downwhite", "downpink", "downpurple", "downyellow", "downgray", "downblue",
    "downgreen", "downbrown",
]

TASK_ORDER = ["age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat",
              "gender", "upcolor", "downcolor"]

# One row per identity:
#   train pid (course CSV and Market train struct), test pid (Market test struct),
#   raw row in CSV_HEADER order (without the id),
#   the 12 expected task indices, the 12 expected class names (TASK_ORDER).
#                    age bp bag hb clo dwn up hair hat gen | up colours 8    | down colours 9
ROWS = [
    (2, 1, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2],
     [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8],
     ["young", "no", "no", "no", "dress", "long", "long", "short", "no", "male",
      "black", "brown"]),
    (7, 3, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1],
     [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2],
     ["teenager", "yes", "yes", "yes", "pants", "short", "short", "long", "yes", "female",
      "white", "pink"]),
    (10, 4, [3, 1, 2, 1, 2, 1, 2, 1, 1, 2, 1, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1],
     [2, 0, 1, 0, 1, 0, 1, 0, 0, 1, 2, 0],
     ["adult", "no", "yes", "no", "pants", "long", "short", "short", "no", "female",
      "red", "black"]),
    (11, 5, [4, 2, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1],
     [3, 1, 0, 1, 0, 1, 0, 1, 0, 0, 3, 4],
     ["old", "yes", "no", "yes", "dress", "short", "long", "long", "no", "male",
      "purple", "yellow"]),
    (12, 6, [1, 1, 1, 2, 2, 1, 1, 2, 2, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1],
     [0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 4, 1],
     ["young", "no", "no", "yes", "pants", "long", "long", "long", "yes", "female",
      "yellow", "white"]),
    (20, 8, [2, 2, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1],
     [1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 5, 7],
     ["teenager", "yes", "no", "no", "pants", "short", "short", "short", "no", "male",
      "gray", "green"]),
    (22, 9, [3, 1, 2, 2, 1, 1, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1],
     [2, 0, 1, 1, 0, 0, 1, 1, 0, 0, 6, 5],
     ["adult", "no", "yes", "yes", "dress", "long", "short", "long", "no", "male",
      "blue", "gray"]),
    (23, 13, [4, 2, 2, 1, 2, 2, 1, 1, 2, 2, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 1, 1],
     [3, 1, 1, 0, 1, 1, 0, 0, 1, 1, 7, 3],
     ["old", "yes", "yes", "no", "pants", "short", "long", "short", "yes", "female",
      "green", "purple"]),
    (27, 14, [3, 1, 1, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1],
     [2, 0, 0, 0, 1, 0, 1, 0, 0, 0, 8, 6],
     ["adult", "no", "no", "no", "pants", "long", "short", "short", "no", "male",
      "multicolour", "blue"]),
    (28, 15, [2, 1, 1, 1, 2, 2, 2, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
     [1, 0, 0, 0, 1, 1, 1, 1, 0, 1, 1, 9],
     ["teenager", "no", "no", "no", "pants", "short", "short", "long", "no", "female",
      "white", "multicolour"]),
]

# Field orders of the real market_attribute.mat (they differ between the two sub-structs).
MAT_TRAIN_FIELDS = [
    "age", "backpack", "bag", "handbag", "downblack", "downblue", "downbrown", "downgray",
    "downgreen", "downpink", "downpurple", "downwhite", "downyellow", "upblack", "upblue",
    "upgreen", "upgray", "uppurple", "upred", "upwhite", "upyellow", "clothes", "down", "up",
    "hair", "hat", "gender", "image_index",
]
MAT_TEST_FIELDS = [
    "age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender",
    "upblack", "upwhite", "upred", "uppurple", "upyellow", "upgray", "upblue", "upgreen",
    "downblack", "downwhite", "downpink", "downpurple", "downyellow", "downgray", "downblue",
    "downgreen", "downbrown", "image_index",
]

IDS = [row[0] for row in ROWS]


def _raw(row) -> dict[str, int]:
    """The row's raw codes by column name (names from the hand-typed CSV_HEADER)."""
    return dict(zip(CSV_HEADER[1:], row[2]))


def _names(row) -> dict[str, str]:
    return dict(zip(TASK_ORDER, row[4]))


def test_the_table_covers_every_code():
    assert len(ROWS) >= 8 and all(len(r[2]) == 27 and len(r[3]) == len(r[4]) == 12 for r in ROWS)
    assert len(set(IDS)) == len(IDS) and len({r[1] for r in ROWS}) == len(ROWS)
    raws = [_raw(r) for r in ROWS]
    assert {r["age"] for r in raws} == {1, 2, 3, 4}
    for column in CSV_HEADER[2:11]:
        assert {r[column] for r in raws} == {1, 2}, column
    for group in (CSV_HEADER[11:19], CSV_HEADER[19:28]):
        set_columns = [tuple(c for c in group if r[c] == 2) for r in raws]
        assert all(len(s) <= 1 for s in set_columns)  # at most one colour per group
        assert {s[0] for s in set_columns if s} == set(group)  # every colour alone once
        assert () in set_columns  # and none set (multicolour)
    for task, values in zip(TASK_ORDER, zip(*(r[4] for r in ROWS))):
        assert len(set(values)) >= 2, task
    assert sorted(MAT_TRAIN_FIELDS) == sorted(MAT_TEST_FIELDS) == sorted(CSV_HEADER[1:]
                                                                         + ["image_index"])


def test_schema_constants_are_the_hand_typed_ones():
    assert list(schema.CSV_COLUMNS) == CSV_HEADER
    assert list(schema.RAW_ATTRIBUTES) == CSV_HEADER[1:]
    assert list(schema.TASK_NAMES) == TASK_ORDER
    assert [t.classes for t in schema.TASKS] == [
        ("young", "teenager", "adult", "old"),
        ("no", "yes"), ("no", "yes"), ("no", "yes"),
        ("dress", "pants"), ("long", "short"), ("long", "short"), ("short", "long"),
        ("no", "yes"), ("male", "female"),
        ("black", "white", "red", "purple", "yellow", "gray", "blue", "green", "multicolour"),
        ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown",
         "multicolour"),
    ]


@pytest.mark.parametrize("row", ROWS, ids=[f"id{r[0]}" for r in ROWS])
def test_raw_row_gives_the_hand_typed_task_indices(row):
    labels = schema.raw_to_tasks(_raw(row), f"identity {row[0]}")
    assert labels.tolist() == row[3]


@pytest.mark.parametrize("row", ROWS, ids=[f"id{r[0]}" for r in ROWS])
def test_task_indices_have_the_hand_typed_class_names(row):
    assert schema.describe(row[3]) == _names(row)
    assert [t.classes[i] for t, i in zip(schema.TASKS, row[3])] == row[4]


@pytest.mark.parametrize("row", ROWS, ids=[f"id{r[0]}" for r in ROWS])
def test_task_indices_write_back_the_hand_typed_raw_row(row):
    """tasks_to_raw writes the fixtures of the other reader tests: pin it to the table too."""
    assert schema.tasks_to_raw(row[3]) == _raw(row)


# ---- end to end through the readers ---------------------------------------------------------------

def _jpeg(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 128), (shade, 40, 90)).save(path, quality=90)


def _assert_labels(records, expected: dict[int, tuple[list[int], list[str]]]) -> None:
    seen = set()
    for rec in records:
        if rec.pid not in expected:
            continue
        labels, names = expected[rec.pid]
        assert rec.attributes is not None, rec.path
        assert list(rec.attributes) == labels, rec.path
        assert schema.describe(rec.attributes) == dict(zip(TASK_ORDER, names)), rec.path
        seen.add(rec.pid)
    assert seen == set(expected)


def test_course_layout_csv_typed_by_hand(tmp_path):
    root = tmp_path / "course"
    root.mkdir()
    with (root / "annotations_train.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        for row in ROWS:
            writer.writerow([row[0]] + row[2])
    for n, pid in enumerate(IDS):
        _jpeg(root / "train" / f"{pid:04d}_c1_0{n:08d}.jpg", n * 20)
        _jpeg(root / "train" / f"{pid:04d}_c4_1{n:08d}.jpg", n * 20 + 5)
    _jpeg(root / "test" / "000000.jpg", 1)
    _jpeg(root / "queries" / "000000.jpg", 2)

    ds = load_dataset(root)
    assert ds.layout == "course"
    assert len(ds.train) == 2 * len(ROWS)
    _assert_labels(ds.train, {row[0]: (row[3], row[4]) for row in ROWS})


def _mat_struct(fields: list[str], rows: list, pid_at: int) -> dict:
    """One sub-struct as in the real file: uint8 (1, N) per attribute, image_index a (1, N) cell
    of 4-character id strings."""
    struct = {}
    for name in fields:
        if name == "image_index":
            cell = np.empty((1, len(rows)), dtype=object)
            for i, row in enumerate(rows):
                cell[0, i] = f"{row[pid_at]:04d}"
            struct[name] = cell
        else:
            struct[name] = np.array([[_raw(row)[name] for row in rows]], dtype=np.uint8)
    return struct


def test_market_attribute_mat_typed_by_hand(tmp_path):
    root = tmp_path / "market"
    root.mkdir()
    # test lists the identities in reverse order under their own ids: read by image_index
    scipy.io.savemat(str(root / "market_attribute.mat"), {"market_attribute": {
        "test": _mat_struct(MAT_TEST_FIELDS, ROWS[::-1], pid_at=1),
        "train": _mat_struct(MAT_TRAIN_FIELDS, ROWS, pid_at=0),
    }})
    for n, row in enumerate(ROWS):
        train_pid, test_pid = row[0], row[1]
        _jpeg(root / "bounding_box_train" / f"{train_pid:04d}_c1s1_{n:06d}_01.jpg", n * 20)
        _jpeg(root / "bounding_box_train" / f"{train_pid:04d}_c2s1_{n:06d}_02.jpg", n * 20 + 5)
        _jpeg(root / "query" / f"{test_pid:04d}_c3s1_{n:06d}_00.jpg", n * 20 + 7)
        _jpeg(root / "bounding_box_test" / f"{test_pid:04d}_c5s1_{n:06d}_01.jpg", n * 20 + 9)
    _jpeg(root / "bounding_box_test" / "0000_c6s1_000100_01.jpg", 3)

    # the fixture has the real file's layout
    mat = scipy.io.loadmat(str(root / "market_attribute.mat"))["market_attribute"]
    assert mat.dtype.names == ("test", "train")
    assert list(mat[0, 0]["train"].dtype.names) == MAT_TRAIN_FIELDS
    assert mat[0, 0]["train"][0, 0]["gender"].shape == (1, len(ROWS))

    ds = load_dataset(root)
    assert ds.layout == "market"
    assert len(ds.train) == 2 * len(ROWS) and len(ds.query) == len(ROWS)
    _assert_labels(ds.train, {row[0]: (row[3], row[4]) for row in ROWS})
    by_test_id = {row[1]: (row[3], row[4]) for row in ROWS}
    _assert_labels(ds.query, by_test_id)
    _assert_labels([r for r in ds.gallery if r.pid != 0], by_test_id)
