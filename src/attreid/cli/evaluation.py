"""The evaluation commands: ``attreid evaluate`` (a checkpoint on a dataset: table, metrics.json,
plots) and ``attreid compare`` (runs beside the study's numbers; training curves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from attreid.cli.base import (
    BACKEND_OPTION,
    CHECKPOINT_HELP,
    DEFAULT_MODEL,
    LAYOUTS,
    _count_progress,
    _fail,
    _reported_warnings,
    _show_backend,
    console,
)
from attreid.data.records import DataError


def evaluate(
    checkpoint: Path = typer.Argument(DEFAULT_MODEL, help=CHECKPOINT_HELP),
    data: Path = typer.Option(..., "--data", help="Dataset folder."),
    protocol: str | None = typer.Option(None, help="market or seed (default: by split)."),
    split: str = typer.Option("test", help="test (query vs gallery), study or random."),
    rerank: bool = typer.Option(False, "--rerank", help="Also report re-ranked metrics."),
    distance: str | None = typer.Option(None, help="euclidean, squared or cosine (default: "
                                        "the distance the checkpoint was trained with)."),
    flip: bool = typer.Option(False, "--flip", help="Flip test-time augmentation."),
    out: Path | None = typer.Option(None, help="Folder for metrics.json and plots "
                                    "(default: eval/ beside the checkpoint; for a "
                                    "shipped model's name, eval/ here)."),
    layout: str = typer.Option("auto", help=LAYOUTS),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    store: Path | None = typer.Option(None, "--store", help="Galleries beyond memory: embed "
                                      "the gallery into a feature store at this folder "
                                      "(replaced) and score it block by block."),
    backend: str = BACKEND_OPTION,
    attribute_queries: bool = typer.Option(False, "--attribute-queries", help="Also measure "
                                           "search by description: fixed attribute queries "
                                           "ranked over the gallery (mAP, P@10, P@50 per rule)."),
) -> None:
    """Evaluate a checkpoint: a table in the terminal, metrics.json, CMC / attribute / ranked
    gallery plots."""
    from attreid.evaluation.evaluate import evaluate_checkpoint
    from attreid.evaluation.report import rich_table
    from attreid.inference.features import FeatureStoreError
    from attreid.inference.onnx import ExportError
    from attreid.utils.checkpoint import CheckpointError

    out = out or checkpoint.parent / "eval"
    try:
        with _reported_warnings(), _count_progress("embedding images") as progress:
            result = evaluate_checkpoint(
                checkpoint, data, layout=layout, protocol=protocol, rerank=rerank,
                distance=distance, flip=flip, device=device, split=split, out=out,
                progress=progress, store=store, backend=backend, on_backend=_show_backend,
                attribute_queries=attribute_queries)
    except (DataError, CheckpointError, ValueError, FeatureStoreError, ExportError) as exc:
        _fail(str(exc))
    m = result.metrics
    console.print(rich_table({checkpoint.parent.name or str(checkpoint): m},
                             f"{split} split, {m['setup']['protocol']} protocol (%)"))
    how = "given" if distance else "the checkpoint's"
    console.print(f"distance: {m['setup']['distance']} ({how})")
    line = f"mAP {m['mAP']:.2%}  rank-1 {m['rank1']:.2%}  mINP {m['mINP']:.2%}"
    if "reranked" in m:
        r = m["reranked"]
        line += f"  | re-ranked: mAP {r['mAP']:.2%}  rank-1 {r['rank1']:.2%}"
    console.print(line)
    if "attribute_queries" in m:
        console.print(_description_table(m["attribute_queries"]))
    console.print(f"wrote {', '.join(p.name for p in result.files)} to {out}", soft_wrap=True)


def _description_table(block: dict) -> Any:
    """Search by description: mAP / P@10 / P@50 (%) per ranking rule and query family."""
    from rich.table import Table

    families = block["families"]
    table = Table(title="search by description: mAP / P@10 / P@50 (%)")
    table.add_column("rule")
    for family, row in families.items():
        table.add_column(f"{family} ({row['queries']})", justify="right")
    table.add_row("chance", *(f"{100 * row['chance']:.1f}" for row in families.values()))
    for rule in block["rules"]:
        table.add_row(rule, *(f"{100 * row[rule]['AP']:.1f} / {100 * row[rule]['P@10']:.0f} / "
                              f"{100 * row[rule]['P@50']:.0f}" for row in families.values()))
    return table


def _plot_curves(runs: list, path: Path) -> None:
    """The per-epoch curves of the training runs among ``runs`` (evaluate output has none)."""
    from attreid.evaluation.compare import read_jsonl
    from attreid.evaluation.plots import plot_training_curves

    training = {run.label: read_jsonl(run.path / "metrics.jsonl") for run in runs
                if run.epoch is not None}
    if not training:
        _fail("--curves: none of the runs is a training run (metrics.jsonl)")
    try:
        plot_training_curves(training, path)
    except OSError as exc:
        _fail(f"{path}: cannot write ({exc})")
    console.print(f"wrote {path}", soft_wrap=True)


def compare(
    runs: list[Path] = typer.Argument(..., help="Training run folders (metrics.jsonl), "
                                      "attreid evaluate folders (metrics.json), or folders "
                                      "holding such runs (e.g. runs/demo)."),
    markdown: Path | None = typer.Option(None, "--markdown", help="Also write the table "
                                         "and summaries as markdown here."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the comparison "
                                         "as JSON here."),
    delta: bool = typer.Option(False, "--delta", help="Add each run's difference to the "
                               "study (percentage points)."),
    curves: Path | None = typer.Option(None, "--curves", help="Also plot the training runs' "
                                       "loss, mAP and mean accuracy per epoch to this PNG."),
    no_study: bool = typer.Option(False, "--no-study", help="Leave out the study's columns "
                                  "(for runs on another protocol, e.g. standard Market-1501)."),
) -> None:
    """The study's table regenerated: per-task accuracy, mean, mAP and rank-1 of each run
    (a training run's best epoch) beside the study's published numbers for its variant."""
    from attreid.evaluation.compare import (
        CompareError,
        comparison_json,
        load_runs,
        rich_table,
        summary,
    )
    from attreid.evaluation.compare import markdown as markdown_text
    from attreid.utils.files import atomic_write_text

    try:
        loaded = load_runs(runs)
    except CompareError as exc:
        _fail(str(exc))
    study = not no_study
    table = rich_table(loaded, delta, study)
    console.print(table, width=max(console.width, console.measure(table).minimum), crop=False)
    for run in loaded:
        console.print(summary(run, study), markup=False, highlight=False, soft_wrap=True)
    outputs = [(markdown, lambda: markdown_text(loaded, delta, study)),
               (json_out, lambda: json.dumps(comparison_json(loaded), indent=2) + "\n")]
    for path, text in outputs:
        if path is None:
            continue
        try:
            atomic_write_text(path, text())
        except OSError as exc:
            _fail(f"{path}: cannot write ({exc})")
        console.print(f"wrote {path}", soft_wrap=True)
    if curves is not None:
        _plot_curves(loaded, curves)
