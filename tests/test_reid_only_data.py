"""Datasets without attribute labels (issue 15, fault 1): a custom labels.csv with only
image, pid, camid, split trains; evaluate prints the re-ID table with the attribute rows shown
as absent and exits 0; compare reads such runs; a dataset with only some tasks labelled shows
those tasks only."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import run_cli_ok

from attreid.data.load import load_dataset
from attreid.evaluation.report import table_rows
from attreid.inference.predictor import Predictor
from attreid.metrics import pairwise_distance, reid_metrics


@pytest.fixture(scope="module")
def runs(custom_runs):
    return custom_runs


def test_evaluate_a_reid_only_dataset(runs, tmp_path, capsys):
    data, out = runs["reid_only"]
    run_cli_ok(["evaluate", str(out / "best.pt"), "--data", str(data), "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "no attribute labels in this data: re-ID only" in " ".join(printed.split())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "accuracy" not in metrics
    # the values: reid_metrics of the Predictor's embeddings under the market protocol
    ds = load_dataset(data)
    predictor = Predictor(out / "best.pt", device="cpu")
    query = predictor.predict([r.path for r in ds.query]).embeddings
    gallery = predictor.predict([r.path for r in ds.gallery]).embeddings
    cams = [np.array([r.camid for r in recs]) for recs in (ds.query, ds.gallery)]
    reid = reid_metrics(pairwise_distance(query, gallery, predictor.distance),
                        np.array([r.pid for r in ds.query]), np.array([r.pid for r in ds.gallery]),
                        *cams, protocol="market")
    for key, value in reid.as_dict().items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    header, rows = table_rows({"m": metrics})
    assert header == ["task", "m", "majority"]
    assert all(row[1:] == ["-", "-"] for row in rows[:13])  # 12 tasks + mean: absent
    assert rows[13] == ["mAP", f"{100 * metrics['mAP']:.2f}", "-"]
    assert not (tmp_path / "attributes.png").exists()


def test_evaluate_a_partly_labelled_dataset(runs, tmp_path):
    data, out = runs["partial"]
    run_cli_ok(["evaluate", str(out / "best.pt"), "--data", str(data), "--out", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    scored = {t for t, v in metrics["accuracy"].items() if v is not None}
    assert scored == {"gender", "age"}
    rows = dict((row[0], row[1:]) for row in table_rows({"m": metrics})[1])
    assert rows["gender"][0] != "-" and rows["hat"] == ["-", "-", "-"]  # + vs majority
    mean = (metrics["accuracy"]["gender"] + metrics["accuracy"]["age"]) / 2
    assert metrics["mean_accuracy"] == pytest.approx(mean)


def test_compare_reads_runs_without_attributes(runs, capsys):
    run_cli_ok(["compare", str(runs["reid_only"][1]), str(runs["partial"][1])])
    printed = capsys.readouterr().out
    assert "run_reid_only" in printed and "no mean accuracy" in printed
