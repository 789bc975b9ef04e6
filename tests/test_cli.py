"""The attreid command line (data commands) via typer's test runner."""

from __future__ import annotations

import json

from helpers import make_market
from typer.testing import CliRunner

from attreid.cli import app

runner = CliRunner()


def test_synth_summary_check_on_both_layouts(tmp_path):
    for layout in ("market", "course"):
        out = tmp_path / layout
        result = runner.invoke(app, ["synth", "--out", str(out), "--ids", "12", "--layout", layout])
        assert result.exit_code == 0, result.output
        result = runner.invoke(app, ["data", "summary", str(out)])
        assert result.exit_code == 0, result.output
        assert f"{layout} layout" in result.output and "upcolor" in result.output
        result = runner.invoke(app, ["data", "check", str(out)])
        assert result.exit_code == 0, result.output
        assert "is a valid dataset" in result.output


def test_check_custom_layout_and_failures(tmp_path):
    root = make_market(tmp_path / "m")
    (root / "query" / "0001_c1s1_000100_00.jpg").write_bytes(b"broken")
    result = runner.invoke(app, ["data", "check", str(root)])
    assert result.exit_code == 1
    assert "0001_c1s1_000100_00.jpg: cannot decode image" in result.output
    custom = tmp_path / "c"
    custom.mkdir()
    (custom / "labels.csv").write_text("image,pid\nnope.jpg,1\n")
    result = runner.invoke(app, ["data", "check", str(custom)])
    assert result.exit_code == 1 and "nope.jpg' not found" in result.output


def test_errors_are_clear(tmp_path):
    result = runner.invoke(app, ["data", "summary", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "dataset folder not found" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    result = runner.invoke(app, ["synth", "--out", str(tmp_path / "full")])
    assert result.exit_code == 1 and "full" in result.output


def test_train_command_and_bad_config(tmp_path):
    data = tmp_path / "data"
    assert runner.invoke(app, ["synth", "--out", str(data), "--ids", "12"]).exit_code == 0
    args = ["train", "-c", "demo", "--data", str(data), "--out", str(tmp_path / "run"),
            "--set", "optim.epochs=1", "--set", "data.batches_per_epoch=2",
            "--set", "data.workers=0", "--set", "data.p=4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "epoch 1:" in result.output and (tmp_path / "run" / "last.pt").is_file()
    result = runner.invoke(app, [*args, "--set", "optim.lr=fast"])
    assert result.exit_code == 1 and "optim.lr: expected float" in result.output
    result = runner.invoke(app, ["train", "-c", "demo", "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 1 and "dataset folder not found" in result.output


def test_demo_prints_and_saves_the_table(tmp_path):
    result = runner.invoke(app, ["demo", "--out", str(tmp_path), "--ids", "20", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    table = (tmp_path / "results.md").read_text()
    for row in ("| age |", "| mean |", "| mAP |", "| downcolor |"):
        assert row in table
    assert "| task | resnet | convhead | attention | majority |" in table
    assert "mAP" in result.output and "majority" in result.output


def test_error_messages_keep_square_brackets(tmp_path):
    missing = tmp_path / "run [bold]1"
    result = runner.invoke(app, ["data", "summary", str(missing)])
    assert result.exit_code == 1
    assert "[bold]1" in " ".join(result.output.split())


def test_evaluate_with_a_feature_store(synth_market, tiny_checkpoint, tmp_path):
    result = runner.invoke(app, ["evaluate", str(tiny_checkpoint), "--data", str(synth_market),
                                 "--out", str(tmp_path / "eval"), "--store",
                                 str(tmp_path / "gallery"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "mAP" in result.output and (tmp_path / "gallery" / "manifest.json").is_file()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["setup"]["store"] == str(tmp_path / "gallery")
    refused = runner.invoke(app, ["evaluate", str(tiny_checkpoint), "--data", str(synth_market),
                                  "--out", str(tmp_path / "eval2"), "--store",
                                  str(tmp_path / "gallery"), "--rerank", "--device", "cpu"])
    assert refused.exit_code == 1 and "re-ranking needs" in refused.output
