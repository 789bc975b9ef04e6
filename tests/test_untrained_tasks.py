"""Models trained without labels for some attribute tasks (issue 15, fault 1): the checkpoint
records ``trained_tasks``; the Predictor, its ONNX export, ``attreid predict``, the search
index, ``attreid search`` and the service treat the other tasks as unknown (never shown, never
searched by). A checkpoint or index without the record means all tasks, as before."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3

import numpy as np
import pytest
import torch
from conftest import require
from helpers import run_cli_ok

from attreid import cli
from attreid.cli import base as cli_base
from attreid.inference.predictor import Predictor
from attreid.schema import (
    CSV_COLUMNS,
    DOWN_COLOR_COLUMNS,
    MISSING,
    TASK_NAMES,
    TASKS,
    UP_COLOR_COLUMNS,
)
from attreid.utils.checkpoint import load_checkpoint, save_checkpoint

PARTIAL = ("age", "gender")  # in TASK_NAMES order
UNTRAINED = tuple(t for t in TASK_NAMES if t not in PARTIAL)
ODD = os.fsdecode(b"caf\xe9_c2_000120.jpg")  # a file name byte that is not UTF-8


@pytest.fixture(scope="module")
def runs(custom_runs, tmp_path_factory):
    """``{"reid_only" | "partial" | "old": (data folder, best.pt)}``: one short epoch each on a
    custom copy of ``synth_market`` without attribute columns / with gender and age only;
    ``old`` is the partial checkpoint with its ``trained_tasks`` key deleted (as saved before
    the key existed)."""
    base = tmp_path_factory.mktemp("untrained")
    made = {name: (data, out / "best.pt") for name, (data, out) in custom_runs.items()}
    state = load_checkpoint(made["partial"][1])
    del state["trained_tasks"]
    save_checkpoint(base / "old.pt", state)
    made["old"] = (made["partial"][0], base / "old.pt")
    return made


@pytest.fixture(scope="module")
def predictors(runs):
    return {name: Predictor(ckpt, device="cpu") for name, (_, ckpt) in runs.items()}


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    """A small course-layout dataset (predict writes classification_test.csv for it only)."""
    from attreid.data.synth import generate

    root = tmp_path_factory.mktemp("course") / "data"
    generate(root, ids=8, seed=3, layout="course")
    return root


# ---- checkpoint and Predictor ------------------------------------------------------------

def test_the_checkpoint_records_the_trained_tasks(runs):
    for name, expected in (("reid_only", []), ("partial", list(PARTIAL))):
        ckpt = runs[name][1]
        for path in (ckpt, ckpt.with_name("last.pt")):
            assert torch.load(path, map_location="cpu", weights_only=False)[
                "trained_tasks"] == expected, (name, path.name)


def test_the_predictor_reports_untrained_tasks_as_unknown(runs, predictors):
    images = sorted((runs["partial"][0] / "qry").glob("*.jpg"))[:5]
    assert predictors["partial"].trained_tasks == PARTIAL
    result = predictors["partial"].predict(images)
    assert result.trained_tasks == PARTIAL
    for t, name in enumerate(TASK_NAMES):
        if name in PARTIAL:
            assert (result.labels[:, t] == result.probabilities[name].argmax(axis=1)).all()
        else:
            assert (result.labels[:, t] == MISSING).all(), name
    classes = {task.name: task.classes for task in TASKS}
    assert result.attributes(0) == {
        name: classes[name][int(result.labels[0, TASK_NAMES.index(name)])] for name in PARTIAL}
    assert set(result.trained_probabilities()) == set(PARTIAL)

    assert predictors["reid_only"].trained_tasks == ()
    none = predictors["reid_only"].predict(images)
    assert (none.labels == MISSING).all() and none.attributes(0) == {}
    assert none.trained_probabilities() == {}

    old = predictors["old"].predict(images)  # no record: all tasks, as before
    assert predictors["old"].trained_tasks == TASK_NAMES
    assert (old.labels >= 0).all() and set(old.attributes(0)) == set(TASK_NAMES)
    np.testing.assert_array_equal(old.labels[:, [0, 9]], result.labels[:, [0, 9]])


def test_the_onnx_export_carries_the_trained_tasks(runs, tmp_path):
    onnx = require("onnx", "ONNX export needs onnx (pip install 'attreid[onnx]')")
    require("onnxruntime", "ONNX inference needs onnxruntime (pip install 'attreid[onnx]')")
    from attreid.inference.onnx import OnnxPredictor, export_onnx

    path = export_onnx(runs["partial"][1], tmp_path / "partial.onnx")
    model = onnx.load(path)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["attreid.trained_tasks"]) == list(PARTIAL)
    onnx_predictor = OnnxPredictor(path)
    assert onnx_predictor.trained_tasks == PARTIAL
    images = sorted((runs["partial"][0] / "qry").glob("*.jpg"))[:3]
    result = onnx_predictor.predict(images)
    assert (result.labels[:, [TASK_NAMES.index(t) for t in UNTRAINED]] == MISSING).all()
    assert set(result.attributes(0)) == set(PARTIAL)

    kept = [p for p in model.metadata_props if p.key != "attreid.trained_tasks"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)  # an export made before the key existed
    onnx.save(model, tmp_path / "old.onnx")
    assert OnnxPredictor(tmp_path / "old.onnx").trained_tasks == TASK_NAMES


# ---- attreid predict -----------------------------------------------------------------------

def _task_of(column):
    if column in UP_COLOR_COLUMNS:
        return "upcolor"
    if column in DOWN_COLOR_COLUMNS:
        return "downcolor"
    return column


def _csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    return rows[1:]


def test_predict_leaves_the_untrained_columns_empty(runs, course, tmp_path):
    from attreid.inference.predict import predict_dataset

    with pytest.warns(UserWarning, match="labels for age, gender only: no prediction for "
                      "backpack, bag"):
        files = predict_dataset(runs["partial"][1], course, tmp_path / "partial", device="cpu")
    assert files.trained_tasks == PARTIAL
    rows = _csv(files.classification)
    assert rows
    features = np.load(files.features)
    assert list(features["trained_tasks"]) == list(PARTIAL)
    assert sorted(k for k in features.files if k.startswith("prob_")) == ["prob_age",
                                                                         "prob_gender"]
    labels = features["labels"]
    assert (labels[:, [TASK_NAMES.index(t) for t in UNTRAINED]] == MISSING).all()
    by_name = {os.path.basename(str(p)): row for p, row in zip(features["paths"], labels)}
    for row in rows:
        cells = dict(zip(CSV_COLUMNS, row))
        empty = {c for c in CSV_COLUMNS[1:] if cells[c] == ""}
        assert empty == {c for c in CSV_COLUMNS[1:] if _task_of(c) in UNTRAINED}, row
        expected = by_name.get(cells["id"])
        if expected is not None:  # not a NNNNNN(1).jpg copy
            assert int(cells["age"]) == expected[0] + 1
            assert int(cells["gender"]) == expected[TASK_NAMES.index("gender")] + 1

    # re-ID only, through the CLI: every attribute cell empty, exit 0
    run_cli_ok(["predict", str(runs["reid_only"][1]), "--data", str(course), "--out",
         str(tmp_path / "reid_only"), "--device", "cpu"])
    rows = _csv(tmp_path / "reid_only" / "classification_test.csv")
    assert rows and all(cell == "" for row in rows for cell in row[1:])
    assert all(row[0] for row in rows)
    assert list(np.load(tmp_path / "reid_only" / "features.npz")["trained_tasks"]) == []

    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="the model was trained")
        files = predict_dataset(runs["old"][1], course, tmp_path / "old", device="cpu")
    assert all(cell != "" for row in _csv(files.classification) for cell in row)
    assert len([k for k in np.load(files.features).files if k.startswith("prob_")]) == 12


# ---- search --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def indexes(runs, predictors, tmp_path_factory):
    """Index folders of the custom gallery (plus a crop with a non-UTF-8 name), by model."""
    require("faiss", "gallery search needs faiss (pip install 'attreid[search]')")
    from attreid.search import build_index

    base = tmp_path_factory.mktemp("untrained_index")
    gallery = base / "gallery"
    shutil.copytree(runs["partial"][0] / "gal", gallery)
    shutil.copy(sorted(gallery.glob("*.jpg"))[0], gallery / ODD)
    return {name: build_index(predictors[name], gallery, base / name).root
            for name in ("reid_only", "partial", "old")}


def _search(indexes, predictors, name):
    from attreid.search import GalleryIndex, GallerySearch

    return GallerySearch(GalleryIndex.open(indexes[name]), predictors[name])


def test_the_partial_index_searches_trained_tasks_only(indexes, predictors, runs):
    from attreid.search import QueryError

    search = _search(indexes, predictors, "partial")
    assert search.index.info["trained_tasks"] == list(PARTIAL)
    assert search.index.trained_tasks == PARTIAL
    with sqlite3.connect(indexes["partial"] / "meta.sqlite") as db:  # the stored predictions
        female = np.array([p for (p,) in db.execute("SELECT p_gender_female FROM images "
                                                    "ORDER BY id")])
    # a threshold that splits this barely trained model's crops (min_prob 0.5 may keep none)
    for min_prob in (0.5, float(np.median(female))):
        hits = search.by_attributes("gender=female", k=1000, min_prob=min_prob)
        kept = np.flatnonzero(female >= min_prob)
        by_hand = sorted(kept, key=lambda i: (-female[i], i))
        assert [h.entry.id for h in hits] == by_hand
    assert 0 < len(hits) < len(female)
    for hit in hits:
        assert set(hit.entry.attributes()) == set(PARTIAL)
        assert hit.match == pytest.approx(female[hit.entry.id])
        assert set(hit.as_dict()["attributes"]) == set(PARTIAL)
        assert set(hit.entry.probabilities) == set(PARTIAL)

    for query in ("hat=yes", {"gender": "female", "upcolor": "red"}):
        with pytest.raises(QueryError) as caught:
            search.by_attributes(query)
        task = "hat" if query == "hat=yes" else "upcolor"
        assert f"attribute {task}:" in str(caught.value)
        assert "trained without labels" in str(caught.value)
        assert "searched by age, gender" in str(caught.value)
    image = sorted((runs["partial"][0] / "qry").glob("*.jpg"))[0]
    with pytest.raises(QueryError, match="attribute backpack: .*trained without labels"):
        search.by_image(image, k=3, attributes="backpack=yes")
    filtered = search.by_image(image, k=3, attributes="gender=male")
    allowed = {i for (i,) in sqlite3.connect(indexes["partial"] / "meta.sqlite").execute(
        "SELECT id FROM images WHERE p_gender_male >= 0.5")}
    assert filtered and {h.entry.id for h in filtered} <= allowed


def test_the_reid_only_index_searches_by_image_only(indexes, predictors, runs):
    from attreid.search import QueryError

    search = _search(indexes, predictors, "reid_only")
    assert search.index.trained_tasks == ()
    for query in ("gender=female", "age=adult", "hat=no"):
        with pytest.raises(QueryError, match=f"attribute {query.split('=')[0]}: .*trained "
                           "without labels.*re-ID only"):
            search.by_attributes(query)
    with pytest.raises(QueryError, match="search by description is unavailable"):
        search.by_attributes("")
    image = sorted((runs["reid_only"][0] / "qry").glob("*.jpg"))[0]
    hits = search.by_image(image, k=5)
    assert len(hits) == 5
    assert [h.distance for h in hits] == sorted(h.distance for h in hits)
    assert all(h.entry.attributes() == {} and h.as_dict()["attributes"] == {} for h in hits)


def test_an_index_without_the_record_means_all_tasks(indexes, predictors, tmp_path):
    from attreid.search import GalleryIndex, GallerySearch

    # made by the old checkpoint: it records all 12 tasks
    assert GalleryIndex.open(indexes["old"]).trained_tasks == TASK_NAMES
    # an index made before the record existed (the key deleted): all tasks
    copy = tmp_path / "idx"
    shutil.copytree(indexes["partial"], copy)
    with sqlite3.connect(copy / "meta.sqlite") as db:
        db.execute("DELETE FROM info WHERE key = 'trained_tasks'")
    db.close()
    search = GallerySearch(GalleryIndex.open(copy), predictors["old"])
    assert search.index.trained_tasks == TASK_NAMES
    hits = search.by_attributes("hat=yes", k=3, min_prob=0.0)
    assert len(hits) == 3 and set(hits[0].entry.attributes()) == set(TASK_NAMES)


def test_the_cli_search_table_shows_trained_tasks_and_escaped_names(indexes, predictors):
    from typer.testing import CliRunner

    runner = CliRunner()
    old_width = cli_base.console.width
    cli_base.console.width = 200
    try:
        bad = runner.invoke(cli.app, ["search", str(indexes["partial"]), "-a", "hat=yes",
                                      "--device", "cpu"])
        assert bad.exit_code == 1
        assert "error:" in bad.output and "attribute hat:" in bad.output
        assert "trained without labels" in bad.output

        shown = runner.invoke(cli.app, ["search", str(indexes["partial"]), "-a",
                                        "gender=female", "--min-prob", "0", "-k", "200",
                                        "--device", "cpu"])
        assert shown.exit_code == 0, shown.output
        assert "caf\\xe9_c2_000120.jpg" in shown.output  # display_name, not the raw path
        assert "/" not in shown.output.split("attributes")[1]  # no up/down colours
        assert "gender=" in shown.output and "age=" in shown.output
        assert "hat" not in shown.output and "upcolor" not in shown.output

        reid = runner.invoke(cli.app, ["search", str(indexes["reid_only"]), "--id", "0",
                                       "-k", "3", "--device", "cpu"])
        assert reid.exit_code == 0, reid.output
        assert "re-ID only" in reid.output
        assert "female" not in reid.output and "male" not in reid.output
    finally:
        cli_base.console.width = old_width


# ---- the service ---------------------------------------------------------------------------

def test_the_service_lists_and_searches_trained_tasks_only(indexes, predictors, runs):
    require("fastapi", "the service needs fastapi (pip install 'attreid[serve]')")
    from fastapi.testclient import TestClient

    from attreid.search.service import create_app

    partial = _search(indexes, predictors, "partial")
    client = TestClient(create_app(partial))
    schema = client.get("/api/schema").json()
    assert [t["name"] for t in schema["tasks"]] == list(PARTIAL)
    assert schema["untrained"] == list(UNTRAINED)
    assert client.get("/healthz").json()["trained_tasks"] == list(PARTIAL)

    response = client.post("/search", data={"attributes": "hat=yes"})
    assert response.status_code == 422 and "attribute hat:" in response.json()["detail"]
    image = sorted((runs["partial"][0] / "qry").glob("*.jpg"))[0]
    with open(image, "rb") as f:
        response = client.post("/search", files={"image": (image.name, f, "image/jpeg")},
                               data={"attributes": "bag=yes"})
    assert response.status_code == 422 and "attribute bag:" in response.json()["detail"]
    response = client.get("/search/attributes", params={"upcolor": "red"})
    assert response.status_code == 422 and "attribute upcolor:" in response.json()["detail"]

    response = client.get("/search/attributes", params={"gender": "female", "k": 200})
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["id"] for r in results] == [
        h.entry.id for h in partial.by_attributes("gender=female", k=200)]
    assert all(set(r["attributes"]) == set(PARTIAL) for r in results)

    client = TestClient(create_app(_search(indexes, predictors, "reid_only")))
    schema = client.get("/api/schema").json()
    assert schema["tasks"] == [] and schema["untrained"] == list(TASK_NAMES)
    response = client.post("/search", data={"attributes": "gender=female"})
    assert response.status_code == 422 and "attribute gender:" in response.json()["detail"]
    with open(image, "rb") as f:
        response = client.post("/search", files={"image": (image.name, f, "image/jpeg")},
                               data={"k": "4"})
    assert response.status_code == 200
    assert [r["attributes"] for r in response.json()["results"]] == [{}] * 4

    client = TestClient(create_app(_search(indexes, predictors, "old")))
    assert [t["name"] for t in client.get("/api/schema").json()["tasks"]] == list(TASK_NAMES)


def test_the_page_handles_a_model_without_attributes():
    """The page's script builds chips from /api/schema's trained tasks and says so when
    there are none (checked in a browser by test_web_e2e.py where one is installed)."""
    from attreid.search.service import WEB_DIR

    script = (WEB_DIR / "app.js").read_text()
    assert "Search by description is unavailable for this model" in script
    assert "buildAttributeChips(schema.tasks, schema.untrained)" in script
