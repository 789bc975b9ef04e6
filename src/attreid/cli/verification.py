"""The verification commands: ``attreid calibrate`` (distance -> P(same person) from a labelled
set, written beside the checkpoint) and ``attreid verify`` (two crops: same person?)."""

from __future__ import annotations

import json
import sys
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

FAR_HELP = "Operating point: the false accept rate (1e-2, 1e-3 or 1e-4)."


def calibrate(
    checkpoint: Path = typer.Argument(DEFAULT_MODEL, help=CHECKPOINT_HELP),
    data: Path | None = typer.Option(None, "--data", help="A labelled dataset folder."),
    split: str = typer.Option("test", help="test (query + gallery crops), study or random."),
    method: str = typer.Option("platt", help="platt (logistic on the distance) or isotonic."),
    out: Path | None = typer.Option(None, help="The calibration file (default: "
                                    "<checkpoint>.calibration.json beside the checkpoint)."),
    flip: bool = typer.Option(False, "--flip", help="Flip test-time augmentation (search and "
                              "verify must embed the same way; an index records it)."),
    max_ids: int = typer.Option(0, "--max-ids", help="Calibrate on this many identities "
                                "drawn at random (0: all)."),
    seed: int = typer.Option(0, help="Seed of --max-ids and of the impostor sample."),
    layout: str = typer.Option("auto", help=LAYOUTS),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    backend: str = BACKEND_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    footage: list[Path] = typer.Option([], "--footage", help="Without labels: a video or "
                                       "frame folder of the site (repeatable, with --tracks)."),
    tracks: list[Path] = typer.Option([], "--tracks", help="The MOTChallenge tracks of each "
                                      "--footage, as attreid ingest wrote them."),
    fps: float | None = typer.Option(None, "--fps", help="Frame rate of frame folders."),
) -> None:
    """Fit P(same person) from embedding distance on a labelled set: genuine pairs (one
    identity, two cameras) against impostor pairs; thresholds at FAR 1e-2 / 1e-3 / 1e-4 and
    the EER; an ROC and the distance histograms beside the file. Without labels (--footage
    and --tracks): two tracks in view together are two people, one track is one person."""
    from attreid.evaluation.verification import calibrate_checkpoint, describe
    from attreid.inference.verdicts import summarize
    from attreid.inference.onnx import ExportError
    from attreid.utils.checkpoint import CheckpointError

    if (data is None) == (not footage):
        _fail("give --data (a labelled set) or --footage with --tracks (a site's video and "
              "its tracks), one of the two")
    if footage:
        _calibrate_footage(checkpoint, footage, tracks, fps, out, flip, backend, device, seed,
                           as_json)
        return
    assert data is not None
    try:
        with _reported_warnings(), _count_progress(
                "embedding crops", sys.stderr if as_json else None) as progress:
            run = calibrate_checkpoint(checkpoint, data, out, method, split, layout, flip,
                                       max_ids, seed, backend, device, progress=progress,
                                       on_backend=_show_backend)
    except (DataError, CheckpointError, ExportError, ValueError, OSError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps(describe(run), indent=1))
        return
    for line in summarize(run.calibration):
        console.print(line, markup=False, highlight=False)
    if run.calibration.unsupported:
        console.print("an unsupported operating point is kept in the file, but verify and "
                      "search say so whenever they decide with it", markup=False,
                      highlight=False)
    console.print(f"wrote {run.path} and {', '.join(f.name for f in run.files)}",
                  soft_wrap=True, markup=False)


def _calibrate_footage(checkpoint: Path, footage: list[Path], tracks: list[Path],
                       fps: float | None, out: Path | None, flip: bool, backend: str,
                       device: str | None, seed: int, as_json: bool) -> None:
    """``calibrate --footage``: :func:`attreid.footage.selfcal.calibrate_footage`."""
    from attreid.footage.selfcal import calibrate_footage
    from attreid.footage.sources import SourceSpec
    from attreid.inference.backends import load_predictor
    from attreid.inference.calibration import calibration_path
    from attreid.inference.verdicts import summarize
    from attreid.inference.onnx import ExportError
    from attreid.utils.checkpoint import CheckpointError
    from attreid.zoo import is_model_name

    if len(footage) != len(tracks):
        _fail(f"--footage and --tracks pair up: got {len(footage)} and {len(tracks)}")
    if out is None and is_model_name(checkpoint):
        _fail(f"{checkpoint}: a shipped model's calibration is part of the package; pass --out "
              "for a calibration of your own (and verify/search --calibration to use it)")
    try:
        predictor, choice = load_predictor(checkpoint, backend, device, flip=flip)
        _show_backend(choice)
        specs = [SourceSpec(path, str(i), 0.0, fps) for i, path in enumerate(footage)]
        calibration, _ = calibrate_footage(predictor, list(zip(specs, tracks)), seed=seed)
        path = calibration.save(out or calibration_path(checkpoint))
    except (DataError, CheckpointError, ExportError, ValueError, OSError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps({"path": str(path), **calibration.data,
                          "thresholds": calibration.thresholds, "tar": calibration.tar}))
        return
    for line in summarize(calibration):
        console.print(line, markup=False, highlight=False)
    console.print(f"wrote {path} (label-free: {calibration.data['genuine']}; "
                  f"{calibration.data['impostors']})", soft_wrap=True, markup=False)


def verify(
    paths: list[Path] = typer.Argument(..., metavar="[CHECKPOINT] FIRST SECOND",
                                       help="Two crops, after a checkpoint, its ONNX export or a "
                                       "shipped model's name (default: the shipped "
                                       f"{DEFAULT_MODEL})."),
    far: float = typer.Option(1e-3, "--far", help=FAR_HELP),
    calibration: Path | None = typer.Option(None, "--calibration", help="A calibration "
                                            "file (default: the one beside the checkpoint)."),
    flip: bool | None = typer.Option(None, "--flip/--no-flip", help="Embed each crop with "
                                     "its mirror image (default: as the calibration was "
                                     "made; off without one)."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    backend: str = BACKEND_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the verdict as JSON."),
) -> None:
    """Is this the same person? The distance of two crops, the calibrated probability and the
    decision at the operating point (without a calibration: the distance, "uncalibrated")."""
    from attreid.inference.calibration import CalibrationError
    from attreid.inference.verdicts import Verifier, percents
    from attreid.inference.onnx import ExportError
    from attreid.utils.checkpoint import CheckpointError

    if len(paths) not in (2, 3):
        _fail(f"verify takes two crops, optionally after a checkpoint: got {len(paths)} "
              "path(s)")
    checkpoint, first, second = ([Path(DEFAULT_MODEL)] + paths)[-3:]
    try:
        verifier = Verifier.open(checkpoint, calibration, far, backend, device, flip)
        _show_backend(verifier.choice)
        result = verifier.verify(first, second)
    except (CalibrationError, CheckpointError, ExportError, DataError, OSError) as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps({"first": str(first), "second": str(second), **result.as_dict()}))
        return
    say = lambda text: console.print(text, markup=False, highlight=False,  # noqa: E731
                                     soft_wrap=True)
    say(f"distance {result.distance:.3f}")
    if result.probability is None:
        say(result.note)
        return
    shown, _ = percents(result.probability, result.p_threshold or result.probability)
    say(f"P(same person) {shown} (from the distance alone, for a pair as likely the same "
        "person as not)")
    if result.person is not None:
        say(f"P(person): first {result.person[0]:.1%}, second {result.person[1]:.1%}")
    say(result.rule())
    if result.unsupported:
        say(f"warning: {result.unsupported}")
    for line in result.drift:
        say(f"warning: {line}")
