"""The ``attreid`` command line. Configuration is read here and passed on as plain arguments."""

from __future__ import annotations

import json
import os
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from attreid.data.inspect import Summary, check_dataset, summarize
from attreid.data.load import load_dataset
from attreid.data.records import DataError
from attreid.errors import AttreidError
from attreid.schema import TASKS

if TYPE_CHECKING:
    from attreid.config import Config

app = typer.Typer(help="attreid: joint pedestrian attribute recognition and person re-ID.",
                  no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Inspect and validate datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
index_app = typer.Typer(help="Build and extend gallery search indexes.", no_args_is_help=True)
app.add_typer(index_app, name="index")
console = Console()
LAYOUTS = "auto|market|course|custom"


def _shown(text: str) -> str:
    """``text`` safe to print on any terminal: bytes of file names that are not UTF-8 (held as
    lone surrogates) become ``\\xNN``; rich markup is escaped."""
    return escape(text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))


def _error(message: str) -> None:
    console.print(f"[bold red]error:[/] {_shown(message)}", highlight=False, soft_wrap=True)


def _fail(message: str) -> None:
    """Print ``message`` as the error line and exit 1; with ``ATTREID_DEBUG=1``, called while
    handling an exception, re-raise that exception instead (its traceback)."""
    if os.environ.get("ATTREID_DEBUG") and sys.exc_info()[1] is not None:
        raise
    _error(message)
    raise typer.Exit(code=1)


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Folder to create (must be new or empty)."),
    ids: int = typer.Option(100, help="Number of identities (half train, half test)."),
    seed: int = typer.Option(0, help="Random seed; the same seed writes the same files."),
    layout: str = typer.Option("market", help="market (standard release) or course."),
) -> None:
    """Write a synthetic pedestrian dataset in the Market-1501 or course layout."""
    from attreid.data.synth import generate

    try:
        info = generate(out, ids=ids, seed=seed, layout=layout, progress=True)
    except ValueError as exc:
        _fail(str(exc))
    counts = ", ".join(f"{k} {v}" for k, v in info.images.items())
    console.print(f"wrote a synthetic {info.layout} dataset to {info.out} ({counts})",
                  soft_wrap=True)


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


@data_app.command("summary")
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


@contextmanager
def _count_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar; yields the ``(done, total)`` callback the library calls."""
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@data_app.command("check")
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


@app.command()
def train(
    config: str = typer.Option(..., "--config", "-c",
                               help="Preset name (seed, strong, cpu, demo) or a YAML file."),
    data: Path | None = typer.Option(None, "--data", help="Dataset folder (sets data.root)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (sets train.out)."),
    overrides: list[str] = typer.Option([], "--set", help="section.key=value, repeatable."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (GPUs, or CPU workers with "
                              "gloo) for DistributedDataParallel; runs torchrun. data.p is the "
                              "global P: each process gets P/nproc identities x K."),
) -> None:
    """Train a joint attribute + re-ID model; checkpoints and metrics go to train.out."""
    from attreid.config import ConfigError, load_config
    from attreid.training.distributed import env_info
    from attreid.training.engine import train as run_training
    from attreid.training.step import NonFiniteLossError

    extra = [f"data.root={data}"] if data else []
    extra += [f"train.out={out}"] if out else []
    try:
        cfg = load_config(config, [*overrides, *extra])
    except ConfigError as exc:
        _fail(str(exc))
    if nproc > 1:
        _check_nproc(cfg, nproc)
        _torchrun(nproc, ["--config", config, *(f"--set={o}" for o in [*overrides, *extra]),
                          *(["--resume"] if resume else [])])
        return
    main = env_info().is_main
    if main:
        console.print(f"training {cfg.model.name}/{cfg.model.backbone} on {cfg.data.root} "
                      f"-> {cfg.train.out}")
    try:
        with _epoch_progress(cfg.optim.epochs, main) as on_step:
            result = run_training(cfg, resume=resume, log=console.print, on_step=on_step)
    except (DataError, ValueError, NonFiniteLossError, OSError) as exc:
        _fail(str(exc))
    if main:
        console.print(f"done: {result.epochs} epochs, best {result.best or '-'}; files in "
                      f"{result.out}")


def _check_nproc(cfg: Config, nproc: int) -> None:
    """Refuse, before starting any process, what every rank would fail on."""
    import torch

    from attreid.config import ConfigError
    from attreid.training.builders import build_data, check_bundle
    from attreid.training.checks import check_training_config
    from attreid.utils.backend import resolve_device

    try:
        check_training_config(cfg, nproc)  # its warnings are printed by rank 0
    except ConfigError as exc:
        _fail(f"--nproc {nproc}: {exc}")
    if resolve_device(cfg.train.device).type == "cuda" and torch.cuda.device_count() < nproc:
        _fail(f"--nproc {nproc}: one GPU per process, but {torch.cuda.device_count()} visible; "
              "use fewer processes or train.device=cpu (gloo)")
    try:  # the records only (no image decoded): what every rank would stop on
        check_bundle(cfg, build_data(cfg))
    except (DataError, ValueError) as exc:
        _fail(str(exc))


def _torchrun(nproc: int, args: list[str]) -> None:
    """Run ``attreid train ARGS`` in ``nproc`` processes with torchrun on this machine."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "attreid.cli", "train", *args]
    console.print(f"running {nproc} processes: {' '.join(command[1:])}", soft_wrap=True)
    code = subprocess.call(command)
    if code:
        _fail(f"distributed training failed (exit code {code}); the messages above say which "
              "rank stopped and why")


@contextmanager
def _epoch_progress(epochs: int, show: bool = True
                    ) -> Iterator[Callable[[int, int, int, dict], None] | None]:
    if not show:
        yield None
        return
    total = f"/{epochs}" if epochs else ""
    columns = (TextColumn("epoch {task.fields[epoch]}" + total), BarColumn(),
               MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("train", total=None, epoch=0, info="")

        def on_step(epoch: int, step: int, steps: int, values: dict) -> None:
            if step == 0:
                bar.reset(task, total=steps)
            info = "  ".join(f"{k} {v:.3f}" if k != "img/s" else f"{v:.0f} img/s"
                             for k, v in values.items())
            bar.update(task, completed=step + 1, epoch=epoch + 1, info=info)

        yield on_step


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (best.pt or last.pt)."),
    data: Path = typer.Option(..., "--data", help="Dataset folder."),
    protocol: str | None = typer.Option(None, help="market or seed (default: by split)."),
    split: str = typer.Option("test", help="test (query vs gallery), study or random."),
    rerank: bool = typer.Option(False, "--rerank", help="Also report re-ranked metrics."),
    distance: str | None = typer.Option(None, help="euclidean, squared or cosine (default: "
                                        "the distance the checkpoint was trained with)."),
    flip: bool = typer.Option(False, "--flip", help="Flip test-time augmentation."),
    out: Path | None = typer.Option(None, help="Folder for metrics.json and plots "
                                    "(default: eval/ beside the checkpoint)."),
    layout: str = typer.Option("auto", help=LAYOUTS),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    store: Path | None = typer.Option(None, "--store", help="Galleries beyond memory: embed "
                                      "the gallery into a feature store at this folder "
                                      "(replaced) and score it block by block."),
) -> None:
    """Evaluate a checkpoint: a table in the terminal, metrics.json, CMC / attribute / ranked
    gallery plots."""
    from attreid.evaluation.evaluate import evaluate_checkpoint
    from attreid.evaluation.report import rich_table
    from attreid.inference.features import FeatureStoreError
    from attreid.utils.checkpoint import CheckpointError

    out = out or checkpoint.parent / "eval"
    try:
        with _reported_warnings(), _count_progress("embedding images") as progress:
            result = evaluate_checkpoint(
                checkpoint, data, layout=layout, protocol=protocol, rerank=rerank,
                distance=distance, flip=flip, device=device, split=split, out=out,
                progress=progress, store=store)
    except (DataError, CheckpointError, ValueError, FeatureStoreError) as exc:
        _fail(str(exc))
    m = result.metrics
    console.print(rich_table({checkpoint.parent.name or "model": m},
                             f"{split} split, {m['setup']['protocol']} protocol (%)"))
    how = "given" if distance else "the checkpoint's"
    console.print(f"distance: {m['setup']['distance']} ({how})")
    line = f"mAP {m['mAP']:.2%}  rank-1 {m['rank1']:.2%}  mINP {m['mINP']:.2%}"
    if "reranked" in m:
        r = m["reranked"]
        line += f"  | re-ranked: mAP {r['mAP']:.2%}  rank-1 {r['rank1']:.2%}"
    console.print(line)
    console.print(f"wrote {', '.join(p.name for p in result.files)} to {out}", soft_wrap=True)


@app.command()
def predict(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (best.pt or last.pt)."),
    data: Path = typer.Option(..., "--data", help="Dataset folder."),
    out: Path = typer.Option(..., "--out", help="Folder for the output files."),
    top_k: int = typer.Option(300, help="Gallery images per query in reid_test.txt."),
    flip: bool = typer.Option(False, "--flip", help="Flip test-time augmentation."),
    layout: str = typer.Option("auto", help=LAYOUTS),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    backend: str = typer.Option("torch", help="torch (a checkpoint) or onnx (a file made by "
                                "`attreid export`, run with ONNX Runtime)."),
    distance: str | None = typer.Option(None, help="euclidean, squared or cosine for "
                                        "reid_test.txt (default: the model's own)."),
) -> None:
    """Predict the query and gallery images: features.npz for any layout, and the study's
    classification_test.csv + reid_test.txt for the course layout."""
    from attreid.inference.onnx import ExportError
    from attreid.inference.predict import predict_dataset
    from attreid.utils.checkpoint import CheckpointError

    try:
        with _reported_warnings(), _count_progress("predicting") as progress:
            files = predict_dataset(checkpoint, data, out, layout=layout, top_k=top_k,
                                    flip=flip, device=device, progress=progress,
                                    backend=backend, distance=distance)
    except (DataError, CheckpointError, ExportError, ValueError) as exc:
        _fail(str(exc))
    written = [p for p in (files.features, files.classification, files.ranking) if p]
    if files.ranking:
        how = "given" if distance else "the model's"
        console.print(f"reid_test.txt ranked by {files.distance} distance ({how})")
    console.print(f"wrote {', '.join(str(p) for p in written)}", soft_wrap=True)


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


@app.command()
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


@app.command()
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


@contextmanager
def _reported_warnings() -> Iterator[None]:
    """Collect the warnings raised in the block (e.g. skipped files) and print each after it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        console.print(f"[yellow]warning:[/] {_shown(str(w.message))}", soft_wrap=True)


def _search_errors() -> tuple[type[Exception], ...]:
    from attreid.inference.features import FeatureStoreError
    from attreid.inference.onnx import ExportError
    from attreid.search import GalleryIndexError, QueryError
    from attreid.utils.checkpoint import CheckpointError

    return (DataError, CheckpointError, ExportError, GalleryIndexError, QueryError, ImportError,
            ValueError, FeatureStoreError)


@app.command()
def export(
    checkpoint: Path = typer.Argument(..., help="A checkpoint (best.pt or last.pt)."),
    out: Path = typer.Option(..., "--out", help="The ONNX file to write."),
    opset: int = typer.Option(17, help="ONNX opset."),
) -> None:
    """Export a checkpoint to ONNX: embedding + every attribute's logits, dynamic batch, the
    preprocessing in the model's metadata."""
    from attreid.inference.onnx import ExportError, export_onnx
    from attreid.utils.checkpoint import CheckpointError

    try:
        path = export_onnx(checkpoint, out, opset)
    except (CheckpointError, ExportError, ImportError) as exc:
        _fail(str(exc))
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)", soft_wrap=True)


@index_app.command("build")
def index_build(
    checkpoint: Path = typer.Argument(..., help="The checkpoint that embeds the crops."),
    images: Path = typer.Option(..., "--images", help="Folder of crops (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Index folder to create."),
    ivf: int = typer.Option(0, "--ivf", help="Approximate IVF index with this many lists "
                            "(-1: about 4 sqrt(N)); 0: exact search."),
    nprobe: int = typer.Option(16, help="IVF lists visited per query."),
    flip: bool = typer.Option(False, "--flip", help="Flip test-time augmentation."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    backend: str = typer.Option("torch", help="torch (a checkpoint) or onnx (its export)."),
    features: Path | None = typer.Option(None, "--features", help="Keep the extracted "
                                         "embeddings and probabilities (a sharded feature "
                                         "store) in this new folder."),
    shard_size: int = typer.Option(8192, "--shard-size", min=1, help="Rows per feature shard."),
) -> None:
    """Embed every crop, predict its attributes and write a FAISS + SQLite index.

    Embeddings stream to a sharded feature store on disk, then into the index chunk by
    chunk, so memory stays bounded apart from the FAISS vectors."""
    try:
        from attreid.inference.onnx import load_predictor
        from attreid.search import build_index

        predictor = load_predictor(checkpoint, backend, device=device, batch_size=batch_size,
                                   flip=flip)
        with _reported_warnings(), _count_progress("embedding crops") as progress:
            index = build_index(predictor, images, out, kind="ivf" if ivf else "flat",
                                nlist=max(ivf, 0), nprobe=nprobe, batch_size=batch_size,
                                overwrite=overwrite, progress=progress, features=features,
                                shard_size=shard_size)
    except _search_errors() as exc:
        _fail(str(exc))
    console.print(f"indexed {len(index)} crops ({index.info['kind']}, {index.info['metric']} "
                  f"distance, {index.info['dim']}-d) in {out}", soft_wrap=True)


@index_app.command("add")
def index_add(
    index: Path = typer.Argument(..., help="Index folder made by `attreid index build`."),
    images: Path = typer.Option(..., "--images", help="Folder of crops; known files are "
                                "skipped."),
    checkpoint: Path | None = typer.Option(None, help="The index's checkpoint, if it moved."),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
) -> None:
    """Append new crops to an index without rebuilding it (same checkpoint only)."""
    try:
        from attreid.search import GallerySearch, add_images

        search = GallerySearch.open(index, checkpoint, device)
        with _reported_warnings(), _count_progress("embedding new crops") as progress:
            added, known, skipped = add_images(search.index, search.predictor, images,
                                               batch_size, progress)
    except _search_errors() as exc:
        _fail(str(exc))
    console.print(f"added {added} crops ({known} already indexed, {len(skipped)} undecodable); "
                  f"{len(search.index)} in {index}", soft_wrap=True)


@app.command()
def search(
    index: Path = typer.Argument(..., help="Index folder."),
    image: Path | None = typer.Option(None, "--image", help="Query crop."),
    query_id: int | None = typer.Option(None, "--id", help="Query by an indexed crop's id."),
    attributes: str = typer.Option("", "--attributes", "-a",
                                   help="Constraints, e.g. gender=female,backpack=yes."),
    k: int = typer.Option(10, "-k", help="Number of results."),
    camera: str = typer.Option("", help="Cameras to search in, e.g. 1,3."),
    min_prob: float = typer.Option(0.5, help="Least probability of each constraint."),
    rerank: bool = typer.Option(False, "--rerank", help="k-reciprocal re-ranking."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    checkpoint: Path | None = typer.Option(None, help="The index's checkpoint, if it moved."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
) -> None:
    """Search an index by image, by indexed crop and/or by attributes."""
    try:
        from attreid.search import QueryError
        from attreid.search.service import open_search, parse_cameras

        if image is not None and query_id is not None:
            raise QueryError("give --image or --id, not both")
        opened = open_search(index, checkpoint, device)
        options = dict(attributes=attributes, cameras=parse_cameras(camera), min_prob=min_prob)
        if image is not None:
            hits = opened.by_image(image, k, rerank=rerank, **options)
        elif query_id is not None:
            hits = opened.by_id(query_id, k, rerank=rerank, **options)
        else:
            hits = opened.by_attributes(attributes, k, options["cameras"], min_prob)
    except _search_errors() as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps([h.as_dict() for h in hits], indent=1))
        return
    trained = opened.index.trained_tasks
    headline = [t for t in ("gender", "age", "upcolor", "downcolor") if t in trained]
    if len(headline) == 4:
        heading = "attributes (up/down)"
    elif headline:
        heading = "attributes"
    else:  # none of the four: the other trained tasks as task=value
        heading = "attributes" if trained else "attributes (none: re-ID only model)"

    def summary(attrs: dict) -> str:
        if len(headline) == 4:
            return (f"{attrs['gender']['value']} {attrs['age']['value']}, "
                    f"{attrs['upcolor']['value']}/{attrs['downcolor']['value']}")
        shown = headline or list(trained)  # only tasks the model was trained on
        return ", ".join(f"{t}={attrs[t]['value']}" for t in shown if t in attrs)

    table = Table(title=f"{len(hits)} result(s)")
    distance = "re-ranked distance" if rerank else f"{opened.index.metric} distance"
    for column in ("rank", "id", "name", distance, "match", "cam", heading):
        table.add_column(column, overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        table.add_row(str(rank), str(hit.entry.id), escape(hit.entry.display_name),
                      "" if hit.distance is None else f"{hit.distance:.4f}",
                      "" if hit.match is None else f"{hit.match:.3f}",
                      str(hit.entry.camera or ""), summary(hit.entry.attributes()))
    console.print(table)


@app.command()
def serve(
    index: Path = typer.Argument(..., help="Index folder."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port."),
    checkpoint: Path | None = typer.Option(None, help="The index's checkpoint, if it moved."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    max_batch: int = typer.Option(16, "--max-batch", min=1, help="Crops of concurrent "
                                  "requests embedded together, at most this many per pass."),
) -> None:
    """Serve the search API (OpenAPI docs at /docs) and its web page (/)."""
    try:
        from attreid.search.service import serve as run_server

        run_server(index, host=host, port=port, checkpoint=checkpoint, device=device,
                   max_batch=max_batch)
    except _search_errors() as exc:
        _fail(str(exc))


def run(args: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run the command line: a named error (:class:`attreid.errors.AttreidError`) is printed
    as one paragraph with exit status 1, Ctrl-C as one line with status 130; other exceptions
    are bugs and keep their traceback. ``ATTREID_DEBUG=1`` shows the traceback of every error."""
    try:
        app(args, prog_name=prog_name)
    except AttreidError as exc:
        if os.environ.get("ATTREID_DEBUG"):
            raise
        _error(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted (a training run continues from its last epoch with "
                      "--resume)", highlight=False)
        sys.exit(130)


def main() -> None:
    """Console-script entry point."""
    run()
