"""The inference commands: ``attreid predict`` (a dataset's query and gallery images to
features.npz and the study's files) and ``attreid export`` (a checkpoint to ONNX)."""

from __future__ import annotations

from pathlib import Path

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


def predict(
    checkpoint: Path = typer.Argument(DEFAULT_MODEL, help=CHECKPOINT_HELP),
    data: Path = typer.Option(..., "--data", help="Dataset folder."),
    out: Path = typer.Option(Path("predictions"), "--out", help="Folder for the output "
                             "files."),
    top_k: int = typer.Option(300, help="Gallery images per query in reid_test.txt."),
    flip: bool = typer.Option(False, "--flip", help="Flip test-time augmentation."),
    layout: str = typer.Option("auto", help=LAYOUTS),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    backend: str = BACKEND_OPTION,
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
                                    backend=backend, distance=distance,
                                    on_backend=_show_backend)
    except (DataError, CheckpointError, ExportError, ValueError) as exc:
        _fail(str(exc))
    written = [p for p in (files.features, files.classification, files.ranking) if p]
    if files.ranking:
        how = "given" if distance else "the model's"
        console.print(f"reid_test.txt ranked by {files.distance} distance ({how})")
    console.print(f"wrote {', '.join(str(p) for p in written)}", soft_wrap=True)


def export(
    checkpoint: Path = typer.Argument(DEFAULT_MODEL, help=CHECKPOINT_HELP),
    out: Path = typer.Option(..., "--out", help="The ONNX file to write."),
    opset: int = typer.Option(17, help="ONNX opset."),
) -> None:
    """Export a checkpoint to ONNX: embedding + every attribute's logits, dynamic batch, the
    preprocessing in the model's metadata."""
    from attreid.inference.onnx import ExportError, export_onnx
    from attreid.utils.checkpoint import CheckpointError

    console.print(f"exporting {checkpoint} to ONNX (opset {opset}); this takes a few seconds",
                  soft_wrap=True, markup=False, highlight=False)
    try:
        path = export_onnx(checkpoint, out, opset)
    except (CheckpointError, ExportError, ImportError) as exc:
        _fail(str(exc))
    console.print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)", soft_wrap=True)
