"""Tests of the synthetic dataset generator (attreid.data.synth, with the identities of
attreid.data.appearance drawn by attreid.data.drawing and attreid.data.camera)."""

from __future__ import annotations

import csv
import hashlib
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from attreid.data import appearance, camera, synth
from attreid.schema import CSV_COLUMNS, RAW_ATTRIBUTES, TASK_NAMES, raw_to_tasks

MARKET_NAME = re.compile(r"^(-1|\d{4})_c([1-6])s([1-6])_(\d{6})_(\d{2})\.jpg$")
COURSE_TRAIN = re.compile(r"^(\d{4})_c([1-6])_(\d{9})\.jpg$")
COURSE_TEST = re.compile(r"^\d{6}(\(1\))?\.jpg$")
BASE = dict(age=2, backpack=0, bag=0, handbag=0, clothes=1, down=0, up=0, hair=0, hat=0,
            gender=0, upcolor=0, downcolor=0)


def _labels(**changes: int) -> list[int]:
    values = dict(BASE, **changes)
    return [values[name] for name in TASK_NAMES]


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _parse(folder: Path) -> list[tuple[int, int]]:
    out = []
    for path in sorted(folder.iterdir()):
        match = MARKET_NAME.match(path.name)
        assert match, f"bad name {path.name}"
        out.append((int(match.group(1)), int(match.group(2))))
    return out


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SynthInfo]:
    out = tmp_path_factory.mktemp("market") / "ds"
    return out, synth.generate(out, ids=16, seed=3)


@pytest.fixture(scope="module")
def course(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, synth.SynthInfo]:
    out = tmp_path_factory.mktemp("course") / "ds"
    return out, synth.generate(out, ids=14, seed=5, layout="course")


def test_market_folders_and_names(market: tuple[Path, synth.SynthInfo]) -> None:
    out, info = market
    assert {p.name for p in out.iterdir()} == {
        "bounding_box_train", "bounding_box_test", "query", "market_attribute.mat", "README.txt"}
    assert (info.train_ids, info.test_ids) == (8, 8)
    for folder, count in info.images.items():
        assert len(list((out / folder).iterdir())) == count
    train = _parse(out / "bounding_box_train")
    per_id = defaultdict(list)
    for pid, cam in train:
        per_id[pid].append(cam)
    assert len(per_id) == 8 and all(p > 0 for p in per_id)
    assert all(12 <= len(c) <= 20 and len(set(c)) >= 2 for c in per_id.values())
    assert "seed: 3" in (out / "README.txt").read_text()


def test_market_query_gallery_protocol(market: tuple[Path, synth.SynthInfo]) -> None:
    out, _ = market
    gallery, query = _parse(out / "bounding_box_test"), _parse(out / "query")
    pids = {pid for pid, _ in gallery}
    assert {0, -1} <= pids
    assert all(name.name.endswith("_00.jpg") for name in (out / "query").iterdir())
    test_ids = {pid for pid, _ in query}
    assert len(test_ids) == 8 and test_ids <= pids
    train_ids = {pid for pid, _ in _parse(out / "bounding_box_train")}
    assert not train_ids & test_ids
    for pid in test_ids:
        cams = [c for p, c in query if p == pid]
        assert len(cams) == len(set(cams)) >= 2
        gallery_cams = {c for p, c in gallery if p == pid}
        assert all(gallery_cams - {cam} for cam in cams)


def test_market_attribute_mat(market: tuple[Path, synth.SynthInfo]) -> None:
    out, _ = market
    mat = scipy.io.loadmat(out / "market_attribute.mat")["market_attribute"]
    assert mat.shape == (1, 1) and mat.dtype.names == ("test", "train")
    ids = {
        "train": sorted({p for p, _ in _parse(out / "bounding_box_train")}),
        "test": sorted({p for p, _ in _parse(out / "query")}),
    }
    orders = {"train": synth.MAT_TRAIN_ORDER, "test": synth.MAT_TEST_ORDER}
    assert orders["train"] != orders["test"]
    for split in ("train", "test"):
        rec = mat[0, 0][split][0, 0]
        assert rec.dtype.names == orders[split]
        assert set(rec.dtype.names) == set(RAW_ATTRIBUTES) | {"image_index"}
        n = len(ids[split])
        assert rec["age"].shape == (1, n) and rec["age"].dtype == np.uint8
        assert set(np.unique(rec["age"])) <= {1, 2, 3, 4}
        for name in RAW_ATTRIBUTES[1:]:
            assert rec[name].shape == (1, n) and set(np.unique(rec[name])) <= {1, 2}
        assert rec["image_index"].shape == (1, n)
        assert rec["image_index"][0, 0].dtype.kind == "U"
        assert [str(v[0]) for v in rec["image_index"].ravel()] == [f"{p:04d}" for p in ids[split]]
        for j in range(n):  # every identity decodes to valid task labels
            raw_to_tasks({k: int(rec[k][0, j]) for k in RAW_ATTRIBUTES})


def test_determinism(tmp_path: Path, market: tuple[Path, synth.SynthInfo]) -> None:
    out, _ = market
    again = synth.generate(tmp_path / "again", ids=16, seed=3).out
    assert _hashes(again) == _hashes(out)
    other = synth.generate(tmp_path / "other", ids=16, seed=4).out
    assert _hashes(other) != _hashes(out)
    assert set(_hashes(other)) != set(_hashes(out))  # other ids and frames, not only pixels


def test_course_determinism(tmp_path: Path) -> None:
    a = synth.generate(tmp_path / "a", ids=6, seed=9, layout="course").out
    b = synth.generate(tmp_path / "b", ids=6, seed=9, layout="course").out
    assert _hashes(a) == _hashes(b)


def test_identity_independent_of_count() -> None:
    """An identity's labels and look depend on (seed, pid) only, not on the dataset size."""
    a = appearance._person(0, 0, 77)
    appearance._person.cache_clear()
    assert appearance._person(0, 0, 77) == a
    assert appearance._person(1, 0, 77) != a


def test_course_layout(course: tuple[Path, synth.SynthInfo]) -> None:
    out, info = course
    assert {p.name for p in out.iterdir()} == {
        "train", "test", "queries", "annotations_train.csv", "synth_truth.csv", "README.txt"}
    with (out / "annotations_train.csv").open() as fh:
        rows = list(csv.reader(fh))
    assert tuple(rows[0]) == CSV_COLUMNS
    ids = [row[0] for row in rows[1:]]
    assert len(ids) == info.train_ids == 7
    assert all(re.fullmatch(r"[1-9]\d*", i) for i in ids)
    assert ids != sorted(ids, key=int) or len(ids) < 3
    for row in rows[1:]:
        raw_to_tasks({k: int(v) for k, v in zip(CSV_COLUMNS[1:], row[1:])})
    train_ids = set()
    for path in (out / "train").iterdir():
        match = COURSE_TRAIN.match(path.name)
        assert match, path.name
        train_ids.add(int(match.group(1)))
    assert train_ids == {int(i) for i in ids}


def test_course_test_queries_and_truth(course: tuple[Path, synth.SynthInfo]) -> None:
    out, info = course
    for folder in ("test", "queries"):
        names = sorted(p.name for p in (out / folder).iterdir())
        assert all(COURSE_TEST.match(n) for n in names)
        plain = [n for n in names if "(" not in n]
        assert plain == [f"{i:06d}.jpg" for i in range(len(plain))]
        assert len(names) == info.images[folder]
    copies = sorted((out / "test").glob("*(1).jpg"))
    assert len(copies) == 2
    for copy in copies:
        original = copy.with_name(copy.name.replace("(1)", ""))
        assert copy.read_bytes() == original.read_bytes()
    with (out / "synth_truth.csv").open() as fh:
        truth = list(csv.DictReader(fh))
    listed = {(r["split"], r["file"]) for r in truth}
    on_disk = {(f, p.name) for f in ("test", "queries") for p in (out / f).iterdir()}
    assert listed == on_disk and len(truth) == len(on_disk)
    pids = {int(r["pid"]) for r in truth if r["split"] == "test"}
    assert {0, -1} <= pids
    assert all(1 <= int(r["camid"]) <= 6 for r in truth)
    assert {int(r["pid"]) for r in truth if r["split"] == "queries"} <= pids - {0, -1}


def _torso(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.float64)
    h, w = a.shape[:2]
    # lower torso: below long hair and logos, above the waist of most bodies
    return a[int(0.4 * h):int(0.52 * h), int(0.4 * w):int(0.6 * w)].reshape(-1, 3).mean(0)


def test_upper_colour_is_visible() -> None:
    red, blue = [], []
    for seed in range(6):
        for cam in (1, 3, 5):
            red.append(_torso(camera.render_identity(_labels(upcolor=2), seed, cam, seed)))
            blue.append(_torso(camera.render_identity(_labels(upcolor=6), seed, cam, seed)))
    red_m, blue_m = np.mean(red, 0), np.mean(blue, 0)
    assert red_m[0] - red_m[2] > blue_m[0] - blue_m[2] + 60


def test_hat_changes_the_head() -> None:
    diffs = []
    for seed in range(4):
        plain = np.asarray(camera.render_identity(_labels(hat=0), seed, 2, 0), dtype=np.float64)
        hat = np.asarray(camera.render_identity(_labels(hat=1), seed, 2, 0), dtype=np.float64)
        h = plain.shape[0]
        head = np.abs(hat[: int(0.3 * h)] - plain[: int(0.3 * h)]).mean()
        legs = np.abs(hat[int(0.6 * h):] - plain[int(0.6 * h):]).mean()
        diffs.append((head, legs))
    assert all(head > 1.0 and head > 3 * legs for head, legs in diffs)


def test_dataset_colours_follow_labels(market: tuple[Path, synth.SynthInfo]) -> None:
    """Within the written data, identities labelled with a white top have brighter torsos."""
    out, _ = market
    mat = scipy.io.loadmat(out / "market_attribute.mat")["market_attribute"][0, 0]
    brightness: dict[int, list[float]] = defaultdict(list)
    for split in ("train", "test"):
        rec = mat[split][0, 0]
        for j, pid in enumerate(str(v[0]) for v in rec["image_index"].ravel()):
            upcolor = raw_to_tasks({k: int(rec[k][0, j]) for k in RAW_ATTRIBUTES})[10]
            for path in out.glob(f"*/{pid}_*.jpg"):
                brightness[int(upcolor)].append(float(_torso(Image.open(path)).mean()))
    black, white = brightness[0], brightness[1]
    assert black and white, "seed 3 should give both a black and a white top"
    assert np.mean(white) > np.mean(black) + 80


def test_render_identity_size_and_labels() -> None:
    img = camera.render_identity(_labels(), width=48, height=96)
    assert img.size == (48, 96) and img.mode == "RGB"
    with pytest.raises(ValueError):
        camera.render_identity([0] * 11)
    with pytest.raises(ValueError):
        camera.render_identity(_labels(), camera=7)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ids"):
        synth.generate(tmp_path / "a", ids=3)
    with pytest.raises(ValueError, match="layout"):
        synth.generate(tmp_path / "b", ids=8, layout="cuhk")
    with pytest.raises(ValueError, match="seed"):
        synth.generate(tmp_path / "c", ids=8, seed=-1)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x.txt").write_text("x")
    with pytest.raises(ValueError, match=str(full)):
        synth.generate(full, ids=8)
    assert not (tmp_path / "a").exists()


def test_empty_existing_folder_is_fine(tmp_path: Path) -> None:
    info = synth.generate(tmp_path, ids=4, seed=1, layout="course")
    assert info.train_ids == 2 and info.test_ids == 2
    assert info.images["test"] >= 4 and info.images["queries"] >= 4
