"""attreid.evaluation.compare and attreid.evaluation.study: run folders made by hand with known numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from attreid.cli import app
from attreid.evaluation.compare import (
    CompareError,
    Run,
    best_record,
    comparison_json,
    load_run,
    load_runs,
    markdown,
    run_folders,
    summary,
    table_rows,
)
from attreid.evaluation.study import COLUMNS, PUBLISHED, published
from attreid.metrics.selection import selection_score
from attreid.schema import TASK_NAMES

runner = CliRunner()


def val(acc: float, mAP: float, rank1: float = 0.9, majority: float = 0.5) -> dict:
    """Validation metrics as the engine logs them: every task at accuracy ``acc``."""
    return {"mAP": mAP, "rank1": rank1, "rank5": 0.95, "mINP": 0.2, "mean_accuracy": acc,
            "accuracy": {t: acc for t in TASK_NAMES}, "mA": acc,
            "majority": {t: majority for t in TASK_NAMES}}


def write_config(folder: Path, variant: str = "resnet", split: str = "study",
                 backbone: str = "resnet18") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"data": {"split": split, "height": 128, "width": 64},
              "model": {"name": variant, "backbone": backbone, "weights": "imagenet"},
              "optim": {"epochs": 50}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))


def write_training_run(folder: Path, vals: list[dict | None], variant: str = "resnet",
                       **config) -> Path:
    """config.yaml + metrics.jsonl with one record per entry of ``vals`` (None: no val)."""
    write_config(folder, variant, **config)
    with (folder / "metrics.jsonl").open("w") as f:
        for epoch, metrics in enumerate(vals, start=1):
            record = {"epoch": epoch, "lr": 1e-3, "train": {"loss": 1.0, "images_per_s": 9.0}}
            if metrics is not None:
                record["val"] = metrics
            f.write(json.dumps(record) + "\n")
    return folder


def write_evaluation(folder: Path, metrics: dict, split: str = "study",
                     protocol: str = "seed") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    setup = {"checkpoint": str(folder.parent / "best.pt"), "split": split, "protocol": protocol}
    (folder / "metrics.json").write_text(json.dumps({**metrics, "setup": setup}))
    return folder


def row(rows: list[list[str]], name: str) -> list[str]:
    return next(r for r in rows if r[0] == name)


def test_published_numbers_name_the_schema_tasks_and_their_means_agree():
    assert COLUMNS == ("resnet", "convhead", "attention", "majority")
    for column in COLUMNS:
        assert set(PUBLISHED[column]) == {*TASK_NAMES, "mean", "mAP"}
    for variant in ("resnet", "convhead", "attention"):  # a typo in a task would show here
        tasks = [PUBLISHED[variant][t] for t in TASK_NAMES]
        assert sum(tasks) / 12 == pytest.approx(PUBLISHED[variant]["mean"], abs=0.01)
    # the published majority mean (70.70) is 0.04 below the mean of its tasks (70.74)
    majority = [PUBLISHED["majority"][t] for t in TASK_NAMES]
    assert sum(majority) / 12 == pytest.approx(70.74, abs=0.01)
    assert published("resnet", "age") == 78.63 and published("convhead", "mAP") == 69.93
    assert published("majority", "mAP") is None and published("resnet", "rank-1") is None
    assert published("vit", "age") is None


def test_best_epoch_is_the_one_training_saved_as_best():
    records = [{"epoch": 1, "val": val(0.80, 0.60)}, {"epoch": 2},
               {"epoch": 3, "val": val(0.90, 0.70)}, {"epoch": 4, "val": val(0.95, 0.65)},
               {"epoch": 5, "val": val(0.70, 0.50)}]
    assert best_record(records)["epoch"] == 3  # 0.80 = 0.80: the first one stays best
    assert best_record([{"epoch": 1}, {"epoch": 2}]) is None
    no_attributes = [{"epoch": 1, "val": {"mAP": 0.3}}, {"epoch": 2, "val": {"mAP": 0.4}}]
    assert best_record(no_attributes)["epoch"] == 2


def test_selection_score_is_the_engine_score():
    from attreid.training import engine

    assert engine.selection_score is selection_score  # training picks best.pt with it
    assert selection_score(val(0.8, 0.6)) == pytest.approx(0.7)
    assert selection_score({"mAP": 0.4, "rank1": 0.5}) == 0.4  # no attributes: mAP alone


def test_training_run_table_uses_the_best_epoch(tmp_path):
    folder = write_training_run(tmp_path / "seed", [val(0.80, 0.60), val(0.85, 0.70, 0.88),
                                                    val(0.84, 0.69)])
    run = load_run(folder)
    assert (run.label, run.variant, run.epoch, run.epochs, run.notes) == \
        ("seed", "resnet", 2, 3, ())
    header, rows = table_rows([run], delta=True)
    assert header == ["task", "seed (resnet)", "study", "Δ", "majority", "study majority"]
    assert row(rows, "age") == ["age", "85.00", "78.63", "+6.37", "50.00", "78.61"]
    assert row(rows, "mean") == ["mean", "85.00", "83.49", "+1.51", "50.00", "70.70"]
    assert row(rows, "mAP") == ["mAP", "70.00", "67.86", "+2.14", "-", "-"]
    assert row(rows, "rank-1") == ["rank-1", "88.00", "-", "-", "-", "-"]
    assert [r[0] for r in rows] == [*TASK_NAMES, "mean", "mAP", "rank-1"]
    assert table_rows([run])[0] == ["task", "seed (resnet)", "study", "majority",
                                    "study majority"]
    assert summary(run) == ("seed (resnet), best epoch 2 of 3: mean accuracy 85.00 beats the "
                            "study's 83.49 (+1.51); mAP 70.00 beats the study's 67.86 (+2.14)")


def test_evaluate_folder_takes_the_variant_from_the_run_beside_it(tmp_path):
    write_config(tmp_path / "run", "attention", split="test", backbone="resnet50")
    folder = write_evaluation(tmp_path / "run" / "eval", val(0.8163, 0.6293), split="test",
                              protocol="market")
    run = load_run(folder)
    assert (run.label, run.variant, run.epoch) == ("run/eval", "attention", None)
    assert run.notes == ("not the study's setup: backbone resnet50, split test, "
                         "protocol market",)
    _, rows = table_rows([run], delta=True)
    assert row(rows, "mean")[1:4] == ["81.63", "81.58", "+0.05"]
    assert row(rows, "mAP")[1:4] == ["62.93", "62.93", "+0.00"]
    assert "mAP 62.93 matches the study's 62.93 (+0.00)" in summary(run)
    assert "attreid evaluate" in summary(run) and "split test" in summary(run)


def test_unknown_variant_and_missing_config_have_no_study_numbers(tmp_path):
    odd = write_training_run(tmp_path / "odd", [val(0.8, 0.6)], variant="vit")
    bare = write_evaluation(tmp_path / "bare", val(0.8, 0.6))
    runs = [load_run(odd), load_run(bare)]
    assert runs[0].notes == ("the study has no variant 'vit'",)
    assert runs[1].variant is None and "no config.yaml" in runs[1].notes[0]
    header, rows = table_rows(runs)
    assert header[1:5] == ["odd (vit)", "study", f"{tmp_path.name}/bare (?)", "study"]
    assert row(rows, "age")[1:5] == ["80.00", "-", "80.00", "-"]
    assert "mean accuracy 80.00 (no study number)" in summary(runs[0])


def test_majority_columns_one_when_runs_agree_else_one_per_run(tmp_path):
    a = load_run(write_training_run(tmp_path / "a", [val(0.8, 0.6, majority=0.5)]))
    b = load_run(write_training_run(tmp_path / "b", [val(0.8, 0.6, majority=0.5)]))
    c = load_run(write_training_run(tmp_path / "c", [val(0.8, 0.6, majority=0.6)]))
    assert table_rows([a, b])[0][-2:] == ["majority", "study majority"]
    header, rows = table_rows([a, c])
    assert header[-3:] == ["majority a", "majority c", "study majority"]
    assert row(rows, "hat")[-3:] == ["50.00", "60.00", "96.81"]


def test_parent_folder_stands_for_its_runs(tmp_path):
    demo = tmp_path / "demo"
    for variant in ("resnet", "convhead", "attention"):
        write_training_run(demo / variant, [val(0.8, 0.6)], variant=variant)
    (demo / "data").mkdir()
    (demo / "results.json").write_text("{}")
    assert run_folders([demo]) == [demo / "attention", demo / "convhead", demo / "resnet"]
    runs = load_runs([demo / "resnet", demo])
    assert [r.variant for r in runs] == ["resnet", "attention", "convhead", "resnet"]


def test_markdown_and_json(tmp_path):
    runs = [load_run(write_training_run(tmp_path / "r", [val(0.8, 0.7)])),
            load_run(write_training_run(tmp_path / "c", [val(0.9, 0.6)], variant="convhead"))]
    text = markdown(runs, delta=True)
    assert text.startswith("| task | r (resnet) | study | Δ | c (convhead) | study | Δ | "
                           "majority | study majority |\n|---|")
    assert "| downcolor | 80.00 | 66.14 | +13.86 | 90.00 | 64.30 | +25.70 | 50.00 | 45.52 |" \
        in text
    assert f"- {summary(runs[1])}" in text and "Study: ImageNet ResNet-18" in text
    data = json.loads(json.dumps(comparison_json(runs)))
    assert data["unit"] == "percent" and data["study"]["published"]["attention"]["bag"] == 75.36
    first = data["runs"][0]
    assert (first["label"], first["variant"], first["epoch"]) == ("r", "resnet", 1)
    assert first["rows"]["mAP"] == {"value": 70.0, "study": 67.86, "delta": 2.14,
                                    "majority": None}
    assert first["rows"]["rank-1"]["study"] is None
    assert data["runs"][1]["rows"]["age"]["delta"] == pytest.approx(6.91)


def test_without_the_study_only_runs_and_majority(tmp_path):
    runs = [load_run(write_training_run(tmp_path / "r", [val(0.8, 0.7)]))]
    header, rows = table_rows(runs, delta=True, study=False)
    assert header == ["task", "r (resnet)", "majority"]
    assert row(rows, "mAP") == ["mAP", "70.00", "-"]
    assert summary(runs[0], study=False) == "r (resnet), best epoch 1 of 1: mean accuracy " \
        "80.00; mAP 70.00"
    text = markdown(runs, study=False)
    assert text.startswith("| task | r (resnet) | majority |") and "Study:" not in text
    result = runner.invoke(app, ["compare", str(tmp_path / "r"), "--no-study"])
    assert result.exit_code == 0, result.output
    assert "study" not in result.output and "mean accuracy 80.00; mAP 70.00" in result.output


def test_errors_name_the_file(tmp_path):
    with pytest.raises(CompareError, match="nowhere: folder not found"):
        run_folders([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(CompareError, match="empty: no metrics.jsonl"):
        load_runs([tmp_path / "empty"])
    broken = write_training_run(tmp_path / "broken", [val(0.8, 0.6)])
    with (broken / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "val": {"mAP"\n')  # a run killed mid-write
    with pytest.raises(CompareError, match=r"broken/metrics.jsonl, line 2: not valid JSON"):
        load_run(broken)
    unvalidated = write_training_run(tmp_path / "noval", [None, None])
    with pytest.raises(CompareError, match="noval/metrics.jsonl: no epoch has validation"):
        load_run(unvalidated)
    bad_eval = tmp_path / "bad_eval"
    bad_eval.mkdir()
    (bad_eval / "metrics.json").write_text("{not json")
    with pytest.raises(CompareError, match="bad_eval/metrics.json: not valid JSON"):
        load_run(bad_eval)
    (bad_eval / "metrics.json").write_text('{"accuracy": {}}')
    with pytest.raises(CompareError, match="bad_eval/metrics.json: no validation metrics"):
        load_run(bad_eval)
    bad_yaml = write_training_run(tmp_path / "bad_yaml", [val(0.8, 0.6)])
    (bad_yaml / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(CompareError, match="bad_yaml/config.yaml: not valid YAML"):
        load_run(bad_yaml)


def test_cli_compare_prints_and_writes(tmp_path):
    run = write_training_run(tmp_path / "seed", [val(0.80, 0.60), val(0.82, 0.70)])
    evaluation = write_evaluation(tmp_path / "seed" / "eval", val(0.85, 0.72))
    md, js = tmp_path / "out" / "table.md", tmp_path / "out" / "table.json"
    result = runner.invoke(app, ["compare", str(run), str(evaluation), "--markdown", str(md),
                                 "--json", str(js)])
    assert result.exit_code == 0, result.output
    assert "seed (resnet), best epoch 2 of 2: mean accuracy 82.00 misses the study's 83.49" \
        in result.output
    assert "seed/eval (resnet), attreid evaluate: mean accuracy 85.00 beats" in result.output
    assert "| mAP | 70.00 | 67.86 | 72.00 | 67.86 | - | - |" in md.read_text()
    assert [r["label"] for r in json.loads(js.read_text())["runs"]] == ["seed", "seed/eval"]
    result = runner.invoke(app, ["compare", str(tmp_path / "out")])
    assert result.exit_code == 1 and "no metrics.jsonl" in result.output


def test_cli_compare_on_a_real_training_run(tiny_checkpoint):
    import torch

    folder = tiny_checkpoint.parent
    result = runner.invoke(app, ["compare", str(folder)])
    assert result.exit_code == 0, result.output
    run = load_run(folder)
    best = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    assert run.epoch == best["epoch"] and run.metrics == best["metrics"]
    assert isinstance(run, Run) and run.variant == "resnet"
    assert f"best epoch {run.epoch} of 1" in result.output
    assert "not the study's setup" in result.output  # the demo preset: random weights, 64x32


def test_cli_compare_plots_the_training_curves(tmp_path):
    from PIL import Image

    run = write_training_run(tmp_path / "seed", [val(0.80, 0.60), None, val(0.82, 0.70)])
    evaluation = write_evaluation(tmp_path / "seed" / "eval", val(0.85, 0.72))
    png = tmp_path / "out" / "curves.png"
    result = runner.invoke(app, ["compare", str(run), str(evaluation), "--curves", str(png)])
    assert result.exit_code == 0, result.output
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 2 * image.height  # three panels
    result = runner.invoke(app, ["compare", str(evaluation), "--curves", str(png)])
    assert result.exit_code == 1 and "none of the runs is a training run" in result.output


def test_training_curves_skip_missing_values_and_need_a_run(tmp_path):
    from attreid.evaluation.plots import plot_training_curves

    records = [{"epoch": 1, "train": {"loss": 2.0}},
               {"epoch": 2, "train": {"loss": float("nan")}, "val": {"mAP": 0.5}}]
    assert plot_training_curves({"a": records}, tmp_path / "c.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="at least one training run"):
        plot_training_curves({}, tmp_path / "d.png")
