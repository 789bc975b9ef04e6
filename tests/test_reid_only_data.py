"""Datasets without attribute labels (issue 15, fault 1): a custom labels.csv with only
image, pid, camid, split trains; evaluate prints the re-ID table with the attribute rows shown
as absent and exits 0; compare reads such runs; a dataset with only some tasks labelled shows
those tasks only."""

from __future__ import annotations

import csv
import json
import shutil

import pytest

from attreid import cli
from attreid.report import table_rows


def _custom(src, out, columns):
    """A custom-layout copy of a synthetic Market-1501 dataset with only ``columns`` of
    attributes (gender 1/2 by identity parity, age 1-4) beside image, pid, camid, split."""
    rows = []
    for split, folder, dst in (("train", "bounding_box_train", "trn"), ("query", "query", "qry"),
                               ("gallery", "bounding_box_test", "gal")):
        (out / dst).mkdir(parents=True)
        for path in sorted((src / folder).glob("*.jpg")):
            pid, cam = int(path.name.split("_")[0]), int(path.name.split("_")[1][1])
            shutil.copy(path, out / dst / path.name)
            row = {"image": f"{dst}/{path.name}", "pid": pid, "camid": cam, "split": split}
            for c in columns:
                row[c] = "" if pid <= 0 else (pid % 2 + 1 if c == "gender" else pid % 4 + 1)
            rows.append(row)
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "pid", "camid", "split", *columns])
        writer.writeheader()
        writer.writerows(rows)
    return out


def _ok(args):
    try:
        cli.run(args)
    except SystemExit as exc:
        assert exc.code in (0, None), args


@pytest.fixture(scope="module")
def runs(synth_market, tmp_path_factory):
    base = tmp_path_factory.mktemp("reid_only")
    made = {}
    for name, columns in (("reid_only", []), ("partial", ["gender", "age"])):
        data = _custom(synth_market, base / name, columns)
        out = base / f"run_{name}"
        _ok(["train", "-c", "demo", "--data", str(data), "--out", str(out), "--set",
             "data.batches_per_epoch=2", "--set", "optim.epochs=1", "--set",
             "train.tensorboard=false", "--set", "train.amp=none"])
        made[name] = (data, out)
    return made


def test_evaluate_a_reid_only_dataset(runs, tmp_path, capsys):
    data, out = runs["reid_only"]
    _ok(["evaluate", str(out / "best.pt"), "--data", str(data), "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "no attribute labels in this data: re-ID only" in " ".join(printed.split())
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert "accuracy" not in metrics and 0 < metrics["mAP"] <= 1
    header, rows = table_rows({"m": metrics})
    assert header == ["task", "m", "majority"]
    assert all(row[1:] == ["-", "-"] for row in rows[:13])  # 12 tasks + mean: absent
    assert rows[13] == ["mAP", f"{100 * metrics['mAP']:.2f}", "-"]
    assert not (tmp_path / "attributes.png").exists()


def test_evaluate_a_partly_labelled_dataset(runs, tmp_path):
    data, out = runs["partial"]
    _ok(["evaluate", str(out / "best.pt"), "--data", str(data), "--out", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    scored = {t for t, v in metrics["accuracy"].items() if v is not None}
    assert scored == {"gender", "age"}
    rows = dict((row[0], row[1:]) for row in table_rows({"m": metrics})[1])
    assert rows["gender"][0] != "-" and rows["hat"] == ["-", "-"]
    mean = (metrics["accuracy"]["gender"] + metrics["accuracy"]["age"]) / 2
    assert metrics["mean_accuracy"] == pytest.approx(mean)


def test_compare_reads_runs_without_attributes(runs, capsys):
    _ok(["compare", str(runs["reid_only"][1]), str(runs["partial"][1])])
    printed = capsys.readouterr().out
    assert "run_reid_only" in printed and "no mean accuracy" in printed
