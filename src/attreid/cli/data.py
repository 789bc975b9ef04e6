"""The dataset commands: ``attreid synth`` (a synthetic dataset), ``attreid data summary`` and
``attreid data check``, and ``attreid demo`` (synthesise, train and evaluate the three variants,
print the table)."""

from __future__ import annotations

import warnings
from pathlib import Path

import typer
from rich.table import Table

from attreid.cli.base import LAYOUTS, _count_progress, _epoch_progress, _fail, console
from attreid.data.inspect import Summary, check_dataset, summarize
from attreid.data.load import load_dataset
from attreid.data.records import DataError
from attreid.errors import AttreidError
from attreid.schema import TASKS


def synth(
    out: Path = typer.Option(..., "--out", help="Folder to create (must be new or empty)."),
    ids: int = typer.Option(100, help="Number of identities (half train, half test)."),
    seed: int = typer.Option(0, help="Random seed; the same seed writes the same files."),
    layout: str = typer.Option("market", help="market (standard release) or course."),
    footage: bool = typer.Option(False, "--footage", help="Write multi-camera footage "
                                 "instead: a video per camera with MOTChallenge ground truth, "
                                 "manifest.csv and people.csv (for attreid ingest)."),
    cameras: int = typer.Option(3, "--cameras", help="With --footage: cameras."),
    people: int = typer.Option(6, "--people", help="With --footage: people walking past."),
    seconds: float = typer.Option(20.0, "--seconds", help="With --footage: seconds a camera."),
) -> None:
    """Write a synthetic pedestrian dataset in the Market-1501 or course layout, or synthetic
    multi-camera footage (--footage)."""
    from attreid.data.synth import generate

    if footage:
        _synth_footage(out, cameras, people, seconds, seed)
        return
    try:
        info = generate(out, ids=ids, seed=seed, layout=layout, progress=True)
    except ValueError as exc:
        _fail(str(exc))
    counts = ", ".join(f"{k} {v}" for k, v in info.images.items())
    console.print(f"wrote a synthetic {info.layout} dataset to {info.out} ({counts})",
                  soft_wrap=True)


def _synth_footage(out: Path, cameras: int, people: int, seconds: float, seed: int) -> None:
    from attreid.data.footage_synth import make_footage

    info = make_footage(out, cameras=cameras, people=people, seconds=seconds, seed=seed)
    console.print(f"wrote {cameras} cameras x {info.frames} frames of synthetic footage with "
                  f"{people} people to {info.out} (manifest: {info.manifest})", soft_wrap=True)


def _summary_tables(summary: Summary) -> list[Table]:
    counts = Table(title=f"{summary.layout} layout: {summary.root}")
    for column in ("split", "images", "identities", "cameras", "distractors", "junk",
                   "unlabelled"):
        counts.add_column(column, justify="left" if column in ("split", "cameras") else "right")
    for s in summary.splits:
        cams = ",".join(map(str, s.cameras)) or "-"
        counts.add_row(s.name, str(s.images), str(s.identities), cams, str(s.distractors),
                       str(s.junk), str(s.unlabelled))
    tables = [counts]
    for split, per_task in summary.attribute_counts.items():
        attrs = Table(title=f"attribute classes over {split} identities (count, share)")
        attrs.add_column("task")
        attrs.add_column("classes")
        for task in TASKS:
            n = sum(per_task[task.name]) or 1
            cells = [f"{c} {k} ({k / n:.0%})" for c, k in zip(task.classes, per_task[task.name])]
            attrs.add_row(task.name, "  ".join(cells))
        tables.append(attrs)
    return tables


def data_summary(
    root: Path = typer.Argument(..., help="Dataset folder."),
    layout: str = typer.Option("auto", help=LAYOUTS),
) -> None:
    """Print images, identities, cameras and attribute class frequencies of a dataset."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            summary = summarize(load_dataset(root, layout))
        except (DataError, ValueError) as exc:
            _fail(str(exc))
    for table in _summary_tables(summary):
        console.print(table)
    if summary.val_ids:
        console.print(f"study validation split: {summary.val_ids} identities")
    for w in caught:
        console.print(f"[yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)


def data_check(
    root: Path = typer.Argument(..., help="Dataset folder."),
    layout: str = typer.Option("auto", help=LAYOUTS),
) -> None:
    """Decode every image and validate every record; exit 1 listing each problem."""
    with _count_progress("decoding images") as progress:
        try:
            problems, notes = check_dataset(root, layout, progress=progress)
        except ValueError as exc:
            _fail(str(exc))
    for note in notes:
        console.print(f"[yellow]warning:[/] {note}", highlight=False, soft_wrap=True)
    if problems:
        for problem in problems:
            console.print(f"[red]problem:[/] {problem}", highlight=False, soft_wrap=True)
        _fail(f"{len(problems)} problem(s) in {root}")
    console.print(f"[green]ok:[/] {root} is a valid dataset", soft_wrap=True)


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="Working folder of the demo."),
    ids: int = typer.Option(200, help="Identities of the synthetic dataset."),
    seed: int = typer.Option(0, help="Random seed of the synthetic dataset."),
    epochs: int | None = typer.Option(None, help="Epochs per variant (default: demo preset)."),
) -> None:
    """The built-in demo: synthesise a dataset, train the three variants briefly, evaluate them
    and print the study-style table (saved as OUT/results.md and OUT/results.json)."""
    from attreid.cli.demo import run_demo
    from attreid.evaluation.report import rich_table

    try:
        with _epoch_progress(epochs or 0) as on_step:
            result = run_demo(out, ids=ids, seed=seed, epochs=epochs, log=console.print,
                              on_step=on_step)
    except AttreidError:  # named errors go to cli.run's handler
        raise
    except (ValueError, OSError) as exc:  # the generator's argument checks
        _fail(str(exc))
    console.print(rich_table(result.results, "validation on the synthetic test split: "
                             "accuracy per task (%), mAP and rank-1 (%)"))
    console.print(f"demo finished in {result.seconds:.0f} s; table in {out / 'results.md'}",
                  soft_wrap=True)
