"""Readers of the three layouts on tiny hand-made datasets, valid and broken."""

from __future__ import annotations

import shutil

import pytest
from helpers import (
    labels_for,
    make_course,
    make_market,
    write_course_csv,
    write_jpeg,
    write_market_mat,
)

from attreid.data.course import read_course
from attreid.data.custom import read_custom
from attreid.data.load import detect_layout, load_dataset
from attreid.data.market import read_market
from attreid.data.records import DataError
from attreid.schema import CSV_COLUMNS, MISSING

# --- standard Market-1501 layout ---------------------------------------------------------------

def test_market_reads_records(tmp_path):
    ds = read_market(make_market(tmp_path))
    assert ds.layout == "market"
    assert len(ds.train) == 6 and len(ds.query) == 2 and len(ds.gallery) == 4
    rec = next(r for r in ds.train if r.pid == 7 and r.camid == 2)
    assert rec.attributes == tuple(labels_for(7))
    gallery = {r.pid: r for r in ds.gallery}
    assert gallery[0].attributes is None and gallery[-1].attributes is None
    assert gallery[3].attributes == tuple(labels_for(3)) and gallery[3].camid == 2


def test_market_fields_indexed_by_name(tmp_path):
    # train and test structs list fields in different orders; a wrong mapping would swap labels.
    ds = read_market(make_market(tmp_path, train_ids=tuple(range(1, 30)), test_ids=(40,)))
    for rec in ds.train:
        assert rec.attributes == tuple(labels_for(rec.pid))


def test_market_bad_file_names_all_listed(tmp_path):
    root = make_market(tmp_path)
    write_jpeg(root / "bounding_box_train" / "0002_c1_000451.jpg")
    write_jpeg(root / "query" / "0001_c9s1_000100_00.jpg")
    with pytest.raises(DataError) as err:
        read_market(root)
    assert len(err.value.problems) == 2
    assert "0002_c1_000451.jpg" in str(err.value) and "camera 9" in str(err.value)


def test_market_identity_without_attributes(tmp_path):
    root = make_market(tmp_path)
    write_jpeg(root / "bounding_box_train" / "0099_c1s1_000001_01.jpg")
    with pytest.raises(DataError, match="identity 0099 has no attributes"):
        read_market(root)


def test_market_missing_field_and_bad_code(tmp_path):
    root = make_market(tmp_path)
    write_market_mat(root / "market_attribute.mat", (2, 7, 10), (1, 3), drop_field="hat")
    with pytest.raises(DataError, match=r"missing fields \['hat'\]"):
        read_market(root)
    write_market_mat(root / "market_attribute.mat", (2, 7, 10), (1, 3), overrides={7: {"bag": 3}})
    with pytest.raises(DataError, match=r"identity 0007.*'bag' has value 3"):
        read_market(root)


def test_market_two_colours_is_an_error_naming_identity(tmp_path):
    root = make_market(tmp_path)
    write_market_mat(root / "market_attribute.mat", (2, 7, 10), (1, 3),
                     overrides={10: {"upred": 2, "upblue": 2}})
    with pytest.raises(DataError, match=r"identity 0010.*more than one colour"):
        read_market(root)


def test_market_no_colour_is_multicolour(tmp_path):
    root = make_market(tmp_path)
    no_up = {c: 1 for c in CSV_COLUMNS if c.startswith("up") and c != "up"}
    write_market_mat(root / "market_attribute.mat", (2, 7, 10), (1, 3), overrides={2: no_up})
    rec = next(r for r in read_market(root).train if r.pid == 2)
    assert rec.attributes[10] == 8  # multicolour


def test_market_missing_parts(tmp_path):
    root = make_market(tmp_path)
    (root / "market_attribute.mat").unlink()
    with pytest.raises(DataError, match="market_attribute.mat: attribute file not found"):
        read_market(root)
    root = make_market(tmp_path / "b")
    shutil.rmtree(root / "query")
    with pytest.raises(DataError, match="query: folder not found"):
        read_market(root)
    (root / "market_attribute.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="cannot read MATLAB file"):
        read_market(root)


def test_market_empty_folder_and_stray_files(tmp_path):
    root = make_market(tmp_path)
    (root / "query" / "Thumbs.db").write_bytes(b"x")
    with pytest.warns(UserWarning, match="ignored 1 non-image"):
        read_market(root)
    for p in (root / "query").iterdir():
        p.unlink()
    with pytest.raises(DataError, match="query: no images found"):
        read_market(root)


# --- course layout -----------------------------------------------------------------------------

def test_course_reads_records_and_study_split(tmp_path):
    with pytest.warns(UserWarning, match="excluded 1 byte-identical duplicate"):
        ds = read_course(make_course(tmp_path))
    assert ds.layout == "course"
    assert len(ds.train) == 8 and len(ds.query) == 3 and len(ds.gallery) == 3
    assert ds.val_ids == (474, 857, 2, 3)  # fewer than 225 rows: all of them, in file order
    assert {r.pid for r in ds.gallery} == {None}
    assert ds.duplicates == {tmp_path / "test" / "000001(1).jpg": tmp_path / "test" / "000001.jpg"}
    rec = next(r for r in ds.train if r.pid == 857)
    assert rec.attributes == tuple(labels_for(857)) and rec.camid in (1, 3)


def test_course_non_identical_copy_is_kept(tmp_path):
    root = make_course(tmp_path)
    write_jpeg(root / "test" / "000002(1).jpg", (0, 0, 255))
    with pytest.warns(UserWarning):
        ds = read_course(root)
    assert len(ds.gallery) == 4
    assert root / "test" / "000002(1).jpg" in {r.path for r in ds.gallery}


def test_course_column_errors(tmp_path):
    root = make_course(tmp_path)
    write_course_csv(root / "annotations_train.csv", (474, 857, 2, 3),
                     columns=[c for c in CSV_COLUMNS if c != "hat"] + ["extra"])
    with pytest.raises(DataError, match=r"missing \['hat'\], unexpected \['extra'\]"):
        read_course(root)


def test_course_bad_values_name_line_and_column(tmp_path):
    root = make_course(tmp_path)
    write_course_csv(root / "annotations_train.csv", (474, 857, 2, 3),
                     overrides={857: {"age": "5"}, 2: {"bag": "x"}})
    with pytest.raises(DataError) as err:
        read_course(root)
    text = str(err.value)
    assert "line 3" in text and "'age' has value 5" in text
    assert "line 4" in text and "column 'bag' 'x' is not an integer" in text


def test_course_unknown_identity_and_bad_name(tmp_path):
    root = make_course(tmp_path)
    write_jpeg(root / "train" / "0999_c1_000000001.jpg")
    write_jpeg(root / "train" / "picture.jpg")
    with pytest.raises(DataError) as err:
        read_course(root)
    assert len(err.value.problems) == 2
    assert "identity 999 has no row" in str(err.value)
    assert "picture.jpg: file name does not parse" in str(err.value)


def test_course_ragged_and_duplicate_rows(tmp_path):
    root = make_course(tmp_path)
    csv_path = root / "annotations_train.csv"
    csv_path.write_text(csv_path.read_text() + "5,1,2\n")
    with pytest.raises(DataError, match=r"line 6: 3 values, expected 28"):
        read_course(root)
    write_course_csv(csv_path, (474, 857, 474))
    with pytest.raises(DataError, match="identity 474 appears twice"):
        read_course(root)


# --- custom layout -----------------------------------------------------------------------------

def _custom(root, rows, header="image,pid,camid,split,gender,age", attributes=None):
    root.mkdir(parents=True, exist_ok=True)
    (root / "labels.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    if attributes:
        (root / "attributes.csv").write_text(attributes)
    for row in rows:
        write_jpeg(root / row.split(",")[0])
    return root


def test_custom_reads_subset_of_attributes(tmp_path):
    root = _custom(tmp_path, ["a/1.jpg,5,1,train,2,3", "a/2.jpg,5,2,train,2,",
                              "b/1.jpg,6,1,query,1,1", "b/2.jpg,6,2,gallery,,"])
    ds = read_custom(root)
    assert len(ds.train) == 2 and len(ds.query) == 1 and len(ds.gallery) == 1
    labels = ds.train[0].attributes
    assert labels[0] == 2 and labels[9] == 1  # age 3 -> 2, gender female -> 1
    assert labels[1] == MISSING and labels[10] == MISSING
    assert ds.gallery[0].attributes == ds.query[0].attributes  # identity-level


def test_custom_without_cameras_and_with_identity_csv(tmp_path):
    root = _custom(tmp_path, ["x.jpg,1", "y.jpg,2"], header="image,pid",
                   attributes="pid,hat\n1,2\n")
    ds = read_custom(root)
    assert [r.camid for r in ds.train] == [None, None]
    assert ds.train[0].attributes[8] == 1 and ds.train[1].attributes is None


def test_custom_errors(tmp_path):
    with pytest.raises(DataError, match=r"missing required columns \['pid'\]"):
        read_custom(_custom(tmp_path / "a", ["x.jpg"], header="image"))
    with pytest.raises(DataError, match=r"unknown columns \['colour'\]"):
        read_custom(_custom(tmp_path / "b", ["x.jpg,1,red"], header="image,pid,colour"))
    root = _custom(tmp_path / "c", ["x.jpg,1,1,train,1,1", "y.jpg,1,1,train,2,1"])
    with pytest.raises(DataError, match=r"line 3: identity 1 has gender=2.*gender=1"):
        read_custom(root)
    root = _custom(tmp_path / "d", ["x.jpg,1,1,val,1,1"])
    with pytest.raises(DataError, match=r"split 'val'"):
        read_custom(root)
    root = _custom(tmp_path / "e", ["x.jpg,1,,,,"])
    (root / "labels.csv").write_text("image,pid\nmissing.jpg,1\n")
    with pytest.raises(DataError, match=r"line 2: image 'missing.jpg' not found"):
        read_custom(root)
    root = _custom(tmp_path / "f", ["x.jpg,1,2"], header="image,pid,upred")
    with pytest.raises(DataError, match="colour group upcolor is partial"):
        read_custom(root)


# --- detection ---------------------------------------------------------------------------------

def test_detect_layout(tmp_path):
    assert detect_layout(make_market(tmp_path / "m")) == "market"
    assert detect_layout(make_course(tmp_path / "c")) == "course"
    assert detect_layout(_custom(tmp_path / "x", ["x.jpg,1"], header="image,pid")) == "custom"
    with pytest.raises(DataError, match="dataset folder not found"):
        load_dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot tell the layout, found none"):
        load_dataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="unknown layout 'foo'"):
        load_dataset(tmp_path / "m", layout="foo")
