"""``attreid ingest``: several sources through detection and tracking into one gallery index.

:func:`ingest` takes the sources of a run (one camera each), runs
:func:`~attreid.footage.pipeline.track_source` on each, writes its tracks (MOTChallenge text and
JSON) and appends its tracklets' best crops to the index (:mod:`attreid.footage.gallery`). A
source that cannot be read is reported and skipped: the others are still ingested and nothing
already indexed is lost. A source already in the index is skipped, so a run killed part-way is
finished by running the same command again. The tracking of the sources can run elsewhere
(:data:`TrackMany`: a Ray cluster, ``attreid ingest --ray``); the index is written here, in
the order of the sources.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from attreid.footage.detections import FootageError
from attreid.footage.gallery import (
    add_source,
    ingested_sources,
    source_identity,
    source_key,
)
from attreid.footage.mot import write_mot
from attreid.footage.pipeline import (
    Detector,
    PipelineSettings,
    SourceTracks,
    predictor_embedder,
    track_source,
)
from attreid.footage.sources import SourceSpec, check_cameras, format_time
from attreid.schema import TASKS
from attreid.search.build import write_index
from attreid.search.index import GalleryIndex
from attreid.utils.files import atomic_write_text


@dataclass
class SourceReport:
    """What happened to one source."""

    camera: str
    path: str
    status: str  # "ingested", "already in the index", "tracked" (no index) or "failed"
    frames: int = 0
    fps: float = 0.0
    tracks: int = 0
    crops: int = 0
    error: str | None = None
    outputs: list[str] = field(default_factory=list)


def open_or_create(out: Path, predictor: Any) -> GalleryIndex:
    """The index at ``out``, made empty (exact search, the predictor's metric) when missing.

    Raises:
        GalleryIndexError: ``out`` is not an index of this predictor's checkpoint.
    """
    if not out.exists():
        dim = int(predictor.embedding_dim)
        write_index(out, [], np.zeros((0, dim), np.float32),
                    {t.name: np.zeros((0, len(t.classes))) for t in TASKS},
                    checkpoint=Path(predictor.checkpoint), metric=predictor.distance,
                    checkpoint_sha256=predictor.checkpoint_sha256,
                    extra={"flip": bool(predictor.flip), "images_root": None},
                    trained_tasks=getattr(predictor, "trained_tasks", None))
    index = GalleryIndex.open(out)
    index.check_checkpoint(predictor.checkpoint, predictor.checkpoint_sha256)
    return index


def settings_summary(settings: PipelineSettings, detector: str) -> dict[str, Any]:
    """The settings that shape a source's crops (part of its identity in the index)."""
    return {"detector": detector, "stride": settings.stride, "target_fps": settings.target_fps,
            "first": settings.first, "last": settings.last,
            "tracker": asdict(settings.tracker), "tracklets": asdict(settings.tracklets)}


TrackMany = Callable[[list[SourceSpec]], Iterator["SourceTracks | Exception"]]
"""``track_many(specs)``: each source's :class:`SourceTracks`, in the order given, or the
:class:`FootageError` / ``OSError`` that stopped it (the others go on). In this process by
default (:func:`local_tracking`); on a Ray cluster: :func:`attreid.cluster.ray_tracking`."""


def local_tracking(make_detector: Callable[[SourceSpec], Detector], predictor: Any | None,
                   settings: PipelineSettings,
                   progress: Callable[[SourceSpec], Callable[[int, int], None] | None] | None
                   = None) -> TrackMany:
    """The :data:`TrackMany` of this process: :func:`track_source` on one source after the
    other, with ``predictor``'s embeddings for appearance (None: motion only)."""
    def track_many(specs: list[SourceSpec]) -> Iterator[SourceTracks | Exception]:
        embedder = predictor_embedder(predictor) if predictor is not None else None
        for spec in specs:
            try:
                yield track_source(spec, make_detector(spec), embedder, settings,
                                   progress(spec) if progress else None)
            except (FootageError, OSError) as exc:
                yield exc

    return track_many


def ingest(specs: list[SourceSpec], make_detector: Callable[[SourceSpec], Detector],
           predictor: Any | None, out: Path | None, settings: PipelineSettings,
           detector_name: str, tracks_dir: Path | None = None,
           progress: Callable[[SourceSpec], Callable[[int, int], None] | None] | None = None,
           track_many: TrackMany | None = None) -> list[SourceReport]:
    """Ingest ``specs`` (see the module docstring).

    Args:
        make_detector: a detector for a source (called once per source).
        predictor: embeds detections for tracking and the gallery's crops (``None``: motion-only
            tracking, no index).
        out: the index folder (created when missing; ``None``: tracks only).
        tracks_dir: where ``<camera>.txt`` (MOTChallenge) and ``<camera>.json`` go.
        progress: a per-source ``(frames done, total)`` callback factory.
        track_many: where the sources are tracked (:data:`TrackMany`; default: here, one
            after the other). Whatever tracks them, the index gets the sources in the order of
            ``specs``.

    Raises:
        FootageError: two sources share a camera id.
        GalleryIndexError: ``out`` belongs to another checkpoint.
    """
    check_cameras(specs)
    index = open_or_create(out, predictor) if out is not None and predictor is not None else None
    reports, todo = [], []
    for spec in specs:
        report, key = _check(spec, index, settings, detector_name)
        reports.append(report)
        if key is not None:
            todo.append((spec, key, report))
    track_many = track_many or local_tracking(make_detector, predictor, settings, progress)
    for (spec, key, report), result in zip(todo, track_many([spec for spec, _, _ in todo])):
        if isinstance(result, Exception):
            report.error = str(result)
        else:
            _finish(spec, key, report, result, index, predictor, settings, detector_name,
                    tracks_dir)
    return reports


def _check(spec: SourceSpec, index: GalleryIndex | None, settings: PipelineSettings,
           detector_name: str) -> tuple[SourceReport, str | None]:
    """The source's report and its key in the index; the key is None (the report saying why)
    when the source is not to be tracked: missing, already in, or in with other settings."""
    report = SourceReport(spec.camera, str(spec.path), "failed")
    if not spec.path.exists():
        report.error = f"{spec.path}: video or frame folder not found; check the path"
        return report, None
    try:
        key = source_key(spec, settings_summary(settings, detector_name))
    except (FootageError, OSError) as exc:
        report.error = str(exc)
        return report, None
    refusal = _already_in(index, spec, key) if index is not None else None
    if refusal == "same":
        report.status = "already in the index"
    elif refusal:
        report.error = refusal
    return report, (None if refusal else key)


def _finish(spec: SourceSpec, key: str, report: SourceReport, result: SourceTracks,
            index: GalleryIndex | None, predictor: Any, settings: PipelineSettings,
            detector_name: str, tracks_dir: Path | None) -> None:
    """A tracked source's tracks written and its crops added to ``index``; ``report`` says
    what happened."""
    report.frames, report.fps = result.frames, result.fps
    report.tracks = len(result.tracklets)
    if tracks_dir is not None:
        report.outputs = write_tracks(tracks_dir, result)
    if index is None:
        report.status = "tracked"
        return
    summary = {"camera": spec.camera, "path": str(spec.path), "frames": result.frames,
               "tracklets": len(result.tracklets), "start": format_time(spec.start),
               "source_id": source_identity(spec), "size": list(result.size),
               "settings": settings_summary(settings, detector_name)}
    try:
        report.crops = add_source(index, predictor, result, key, summary)
    except FootageError as exc:  # e.g. a camera number taken in the index
        report.error = str(exc)
        return
    report.status = "ingested"


def _already_in(index: GalleryIndex, spec: SourceSpec, key: str) -> str | None:
    """``"same"`` when the source is in the index with these settings; a refusal when it is in
    with other ones (its people would be in twice); ``None`` when it is not in."""
    sources = ingested_sources(index)
    if key in sources:
        return "same"
    identity = source_identity(spec)
    for summary in sources.values():
        if summary.get("source_id") == identity:
            return (f"{spec.path}: already in this index with other settings (detector "
                    f"{summary.get('settings', {}).get('detector')!r}, stride "
                    f"{summary.get('settings', {}).get('stride')}); ingesting it again would "
                    "put its people in twice: ingest it into a new index (--out) to compare "
                    "settings")
    return None


def _tracks_name(folder: Path, camera: str, source: str) -> str:
    """``camera``, or ``camera_2``, ``camera_3``, ... when the tracks of another source of the
    same camera (an earlier hour's file) are there already: they are never overwritten."""
    for n in range(1, 10_000):
        name = camera if n == 1 else f"{camera}_{n}"
        try:
            owner = json.loads((folder / f"{name}.json").read_text()).get("source")
        except (OSError, ValueError, AttributeError):
            return name  # free (or not ours to keep: unreadable)
        if owner == source:
            return name
    raise FootageError(f"{folder}: too many track files for camera {camera!r}")


def write_tracks(folder: Path, result: SourceTracks) -> list[str]:
    """``<camera>.txt`` (MOTChallenge, 1-based frames, gaps interpolated) and ``<camera>.json``
    (per tracklet: id, first and last frame and time, observations, crop frames);
    ``<camera>_2.txt`` ... for a further source of a camera (:func:`_tracks_name`)."""
    from attreid.footage.gallery import _safe

    name = _tracks_name(folder, _safe(result.spec.camera), str(result.spec.path))
    mot = folder / f"{name}.txt"
    write_mot(mot, sorted(result.tracks.items()))
    rows = [{"track": t.track_id, "camera": t.camera, "source": t.source,
             "first_frame": t.first_frame, "last_frame": t.last_frame,
             "first_time": format_time(t.first_time), "last_time": format_time(t.last_time),
             "observations": t.observations,
             "crops": [{"frame": c.frame, "time": format_time(c.time),
                        "box": [round(float(v), 2) for v in c.box],
                        "quality": round(c.quality, 4)} for c in t.crops]}
            for t in result.tracklets]
    path = folder / f"{name}.json"
    atomic_write_text(path, json.dumps({"camera": result.spec.camera,
                                        "source": str(result.spec.path),
                                        "frames": result.frames, "tracklets": rows}, indent=1))
    return [str(mot), str(path)]
