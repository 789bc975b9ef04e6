"""``attreid ingest``: camera footage (video files, frame folders) into a gallery of tracked
people, with the tracks written as MOTChallenge text and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape

from attreid.cli.base import BACKEND_OPTION, DEFAULT_MODEL, _count_progress, _fail, \
    _reported_warnings, _show_backend, console

DETECTORS_HELP = ("hog (OpenCV's HOG people detector, focused by motion; no weights), motion "
                  "(moving blobs of a static camera), mot (precomputed MOTChallenge det.txt: "
                  "--det) or onnx (your own detector: --onnx, --onnx-size, --onnx-layout, "
                  "--person-class).")
INGEST_BATCH = 32
"""Crops per forward pass of ingest's predictor (here and on Ray workers alike)."""


def ingest(
    checkpoint: Path | None = typer.Argument(None, help="The checkpoint (or shipped model's "
                                             "name) that embeds the people; default: the "
                                             f"shipped {DEFAULT_MODEL}, none with --no-index "
                                             "(motion-only tracks)."),
    video: list[Path] = typer.Option([], "--video", help="A video file or frame folder; "
                                     "repeat for several cameras."),
    camera: list[str] = typer.Option([], "--camera", help="Camera id of each --video, in "
                                     "order (default: 1, 2, ...)."),
    start: list[str] = typer.Option([], "--start", help="Wall-clock time of each --video's "
                                    "first frame, ISO 8601 (UTC unless an offset is given), "
                                    "e.g. 2026-12-01T09:30:00."),
    fps: float | None = typer.Option(None, "--fps", help="Frame rate of frame folders."),
    manifest: Path | None = typer.Option(None, "--manifest", help="CSV or YAML listing "
                                         "sources: path, camera, start, fps."),
    out: Path | None = typer.Option(None, "--out", help="Index folder (created, or extended: "
                                    "sources already in it are skipped)."),
    tracks: Path | None = typer.Option(None, "--tracks", help="Write each camera's tracks here "
                                       "(<camera>.txt MOTChallenge, <camera>.json; default: "
                                       "OUT/tracks)."),
    no_index: bool = typer.Option(False, "--no-index", help="Only track; write no index."),
    detector: str = typer.Option("hog", "--detector", help=DETECTORS_HELP),
    det: Path | None = typer.Option(None, "--det", help="MOTChallenge det.txt (--detector mot)."),
    onnx: Path | None = typer.Option(None, "--onnx", help="ONNX detector (--detector onnx)."),
    onnx_size: str = typer.Option("640x640", "--onnx-size", help="Its input, WxH."),
    onnx_layout: str = typer.Option("yolov8", "--onnx-layout", help="Its output layout: "
                                    "yolov8, yolov5 or boxes."),
    person_class: int = typer.Option(0, "--person-class", help="Its person class index."),
    stride: int = typer.Option(1, "--stride", min=1, help="Process every N-th frame."),
    target_fps: float | None = typer.Option(None, "--target-fps", help="Or thin to about "
                                            "this many frames a second."),
    first: int = typer.Option(0, "--first", min=0, help="First frame (0-based)."),
    last: int | None = typer.Option(None, "--last", help="Last frame (0-based, inclusive)."),
    gt: Path | None = typer.Option(None, "--gt", help="MOTChallenge ground truth of the one "
                                   "source: print detection recall/precision and MOTA, IDF1, "
                                   "id switches (py-motmetrics); boxes on its conf-0 rows "
                                   "(ignored regions) count neither way."),
    gt_scale: float = typer.Option(1.0, "--gt-scale", help="Scale the ground truth's boxes "
                                   "(e.g. 0.625 for annotations of a larger frame)."),
    device: str | None = typer.Option(None, help="cpu, cuda, ... (default: auto)."),
    backend: str = BACKEND_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the per-source report as JSON."),
    ray: str | None = typer.Option(None, "--ray", help="Track the sources on a Ray cluster, "
                                   "one CPU each: auto, local, HOST:6379 or ray://HOST:10001; "
                                   "the footage must be at the same path on every node."),
) -> None:
    """Detect and track the people in camera footage and add their best crops to a gallery
    index, with camera, frame, time, box and track id; print per source frames/s, tracks and
    crops. A source that fails is reported and the others still go in; rerun the same command
    after an interruption: sources already in the index are skipped."""
    from attreid.footage.ingest import ingest as run_ingest
    from attreid.footage.pipeline import PipelineSettings

    specs = _specs(video, camera, start, fps, manifest)
    if not specs:
        _fail("nothing to ingest: give --video (repeatable) or --manifest")
    for spec in specs:
        if spec.path.is_dir() and not spec.fps:
            console.print(f"[yellow]warning:[/] {escape(str(spec.path))} is a frame folder "
                          "without a frame rate: it will be skipped (give --fps, or an fps "
                          "column in the manifest)", soft_wrap=True)
    if video and not start:
        console.print("[yellow]warning:[/] no --start: times count from 1970-01-01T00:00:00Z "
                      "(give each --video the wall-clock time of its first frame)",
                      soft_wrap=True)
    if out is None and not no_index:
        _fail("give --out INDEX (the gallery to create or extend), or --no-index")
    if not no_index and checkpoint is None:
        checkpoint = Path(DEFAULT_MODEL)
    if gt is not None and len(specs) != 1:
        _fail("--gt scores one source; give one --video")
    predictor, chosen = _predictor(checkpoint, backend, device) if checkpoint is not None \
        else (None, backend)
    settings = PipelineSettings(stride=stride, target_fps=target_fps, first=first, last=last)
    options = _detector_options(detector, det, onnx, onnx_size, onnx_layout, person_class)
    tracks_dir = tracks or (out / "tracks" if out is not None and not no_index else
                            Path("tracks") if gt is not None else None)
    track_many = None
    if ray is not None:
        from attreid.cluster import ray_tracking

        track_many = ray_tracking(
            ray, None if predictor is None else predictor.checkpoint, chosen,
            lambda spec: _make_detector(detector, options), settings, INGEST_BATCH,
            done=lambda spec: console.print(f"tracked {spec.camera} on Ray", markup=False))
    from attreid.cluster.ray_embed import ClusterError

    try:
        with _reported_warnings(), _count_progress("frames") as bar:
            reports = run_ingest(specs, lambda spec: _make_detector(detector, options),
                                 predictor, None if no_index else out, settings, detector,
                                 tracks_dir, progress=lambda spec: lambda done, total: bar(
                                     done, total or None), track_many=track_many)
    except ClusterError as exc:
        _fail(str(exc))
    _print_reports(reports, as_json)
    if gt is not None and reports and reports[0].outputs:
        _print_scores(gt, gt_scale, Path(reports[0].outputs[0]), first, last, as_json)
    if any(r.status == "failed" for r in reports):
        raise typer.Exit(code=1)


def _specs(video: list[Path], camera: list[str], start: list[str], fps: float | None,
           manifest: Path | None) -> list[Any]:
    from attreid.footage.detections import FootageError
    from attreid.footage.sources import SourceSpec, check_cameras, parse_time, read_manifest

    specs = read_manifest(manifest) if manifest is not None else []
    for flag, values in (("--camera", camera), ("--start", start)):
        if values and len(values) != len(video):
            raise FootageError(f"{flag} was given {len(values)} time(s) for {len(video)} "
                               "--video; give one per --video, in the same order")
    before = len(specs)
    for i, path in enumerate(video):
        specs.append(SourceSpec(path, camera[i] if camera else str(before + i + 1),
                                parse_time(start[i], f"--start {start[i]}") if start else 0.0,
                                fps))
    check_cameras(specs)
    return specs


def _predictor(checkpoint: Path, backend: str, device: str | None) -> tuple[Any, str]:
    """The predictor and the name of the backend chosen (:data:`INGEST_BATCH` crops a batch)."""
    from attreid.inference.backends import load_predictor

    predictor, choice = load_predictor(checkpoint, backend, device=device,
                                       batch_size=INGEST_BATCH)
    _show_backend(choice)
    return predictor, choice.backend


def _detector_options(name: str, det: Path | None, onnx: Path | None, size: str,
                      layout: str, person_class: int) -> dict[str, Any]:
    from attreid.footage.detections import FootageError

    if name == "mot":
        if det is None:
            raise FootageError("--detector mot needs --det FILE (MOTChallenge det.txt)")
        return {"path": det}
    if name == "onnx":
        if onnx is None:
            raise FootageError("--detector onnx needs --onnx FILE")
        try:
            width, height = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise FootageError(f"--onnx-size {size!r}: expected WxH, e.g. 640x640") from None
        return {"path": onnx, "input_size": (width, height), "layout": layout,
                "person_class": person_class}
    return {}


def _make_detector(name: str, options: dict[str, Any]) -> Any:
    from attreid.footage.detect import build_detector

    return build_detector(name, **options)


def _print_reports(reports: list[Any], as_json: bool) -> None:
    from dataclasses import asdict

    if as_json:
        print(json.dumps([asdict(r) for r in reports], indent=1))
        return
    for r in reports:
        if r.status == "failed":
            console.print(f"[red]camera {r.camera}: failed[/] ({r.error})", soft_wrap=True,
                          markup=True)
            continue
        line = f"camera {r.camera}: {r.status}"
        if r.frames:
            line += f", {r.frames:,} frames at {r.fps:.1f} frames/s, {r.tracks} tracks"
        if r.crops:
            line += f", {r.crops} crops indexed"
        console.print(line, soft_wrap=True, highlight=False)
        for path in r.outputs:
            console.print(f"  tracks: {path}", soft_wrap=True, highlight=False)


def _hota_text(scores: dict) -> str:
    if scores.get("hota") is None:
        return "HOTA n/a (pip install --no-deps trackeval), "
    return f"HOTA {scores['hota']:.1f} (DetA {scores['deta']:.1f}, AssA {scores['assa']:.1f}), "


def _print_scores(gt: Path, scale: float, found: Path, first: int, last: int | None,
                  as_json: bool) -> None:
    from attreid.footage.mot import (
        detection_scores,
        drop_ignored,
        read_mot,
        split_ignored,
        tracking_scores,
    )

    every = read_mot(gt, scale=scale, keep_ignored=True)
    every = {f: d for f, d in every.items() if f - 1 >= first and (last is None or f - 1 <= last)}
    truth, ignored = split_ignored(every)  # conf 0: ignored regions, as MOTChallenge scores
    tracked = drop_ignored(read_mot(found), truth, ignored)
    det = detection_scores(truth, tracked)
    scores = tracking_scores(truth, tracked)
    if as_json:
        print(json.dumps({"detection": det.__dict__, "tracking": scores}, indent=1))
        return
    console.print(f"against {gt}: detection recall {det.recall:.3f}, precision "
                  f"{det.precision:.3f}; MOTA {scores['mota']:.1f}, IDF1 {scores['idf1']:.1f}, "
                  f"{_hota_text(scores)}"
                  f"{scores['id_switches']} id switches, {scores['tracks']} tracks for "
                  f"{scores['people']} people", soft_wrap=True, highlight=False)
