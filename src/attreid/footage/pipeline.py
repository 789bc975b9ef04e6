"""One source through the stages: frames -> detections -> embeddings -> tracks -> tracklets.

:func:`track_source` runs a detector, an optional embedder (attreid's re-ID embeddings of each
detection, used by the tracker's appearance matching) and a :class:`~attreid.footage.track.Tracker`
over the frames of one :class:`~attreid.footage.sources.SourceSpec`, and returns the tracks
frame by frame (for MOTChallenge export and scoring) and the tracklets (for the gallery).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from attreid.footage.detections import Detections, clip_boxes, cut_box
from attreid.footage.sources import Frame, SourceSpec, read_frames
from attreid.footage.track import Tracker, TrackerSettings, interpolate_gaps
from attreid.footage.tracklets import Tracklet, TrackletBuilder, TrackletSettings

Progress = Callable[[int, int], None]
"""``(frames done, frames expected or 0 when unknown)``."""


class Detector(Protocol):
    """What :func:`track_source` needs of a detector (see :mod:`attreid.footage.detect`)."""

    def detect(self, frame: Frame) -> Detections: ...

    def reset(self) -> None: ...


Embedder = Callable[[list[np.ndarray]], np.ndarray]
"""BGR crops (h, w, 3) uint8 -> (N, D) float32 embeddings."""


def predictor_embedder(predictor: Any) -> Embedder:
    """An :data:`Embedder` of an :class:`attreid.Predictor` (OpenCV's BGR crops, as they are)."""
    def embed(crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, int(predictor.embedding_dim)), np.float32)
        return np.asarray(predictor.predict(crops, channels="bgr").embeddings, np.float32)
    return embed


@dataclass
class PipelineSettings:
    """Knobs of :func:`track_source`.

    Attributes:
        stride: read every ``stride``-th frame; target_fps: or thin to about this rate.
        first, last: 0-based frame range (``last`` inclusive; ``None``: to the end).
        min_embed_height: detections lower than this (pixels) are not embedded (too small for
            re-ID; the tracker matches them by motion only).
        interpolate_gap: frames a track may miss and still be filled in the exported tracks.
    """

    stride: int = 1
    target_fps: float | None = None
    first: int = 0
    last: int | None = None
    min_embed_height: float = 24.0
    interpolate_gap: int = 20
    tracker: TrackerSettings = field(default_factory=TrackerSettings)
    tracklets: TrackletSettings = field(default_factory=TrackletSettings)


@dataclass
class SourceTracks:
    """What one source gave.

    Attributes:
        tracks: 1-based frame number -> tracked detections (ids > 0), gaps interpolated.
        tracklets: the gallery's tracklets (split, filtered, best crops).
        frames: frames processed; seconds: wall time; size: (width, height) of the frames.
        times: 1-based frame number -> wall-clock time (seconds since the epoch).
    """

    spec: SourceSpec
    tracks: dict[int, Detections]
    tracklets: list[Tracklet]
    frames: int
    seconds: float
    size: tuple[int, int]
    times: dict[int, float]

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def track_source(spec: SourceSpec, detector: Detector, embedder: Embedder | None = None,
                 settings: PipelineSettings | None = None,
                 progress: Progress | None = None) -> SourceTracks:
    """Detect, embed and track the people of one source.

    Raises:
        FootageError: the source cannot be read (see :func:`attreid.footage.sources.read_frames`).
    """
    settings = settings or PipelineSettings()
    detector.reset()
    tracker = Tracker(settings.tracker)
    builder = TrackletBuilder(spec.camera, str(spec.path), settings.tracklets)
    tracks: dict[int, Detections] = {}
    times: dict[int, float] = {}
    size = (0, 0)
    start = time.perf_counter()
    count = 0
    for frame in read_frames(spec, settings.stride, settings.target_fps, settings.first,
                             settings.last):
        size = frame.size
        found = detector.detect(frame)
        found.boxes = clip_boxes(found.boxes, *frame.size)
        if embedder is not None:
            found = _embed(found, frame, embedder, settings.min_embed_height)
        tracked = tracker.update(found, frame)
        builder.add(tracked, frame)
        tracks[frame.index + 1] = tracked
        times[frame.index + 1] = frame.time
        count += 1
        if progress:
            progress(count, 0)
    tracklets = builder.finish()
    kept = relabel(tracks, tracklets)
    gap = settings.interpolate_gap * max(settings.stride, 1)
    filled = interpolate_gaps(kept, gap) if gap else kept
    seconds = time.perf_counter() - start
    return SourceTracks(spec, filled, tracklets, count, seconds, size, times)


def relabel(tracks: dict[int, Detections], tracklets: list[Tracklet]) -> dict[int, Detections]:
    """The tracked detections of the tracklets kept, with the tracklets' ids (a split track's
    later part renamed; tracks dropped as too short left out). Frames are 1-based keys, the
    tracklets' frames 0-based."""
    spans: dict[int, list[tuple[int, int, int]]] = {}
    for t in tracklets:
        spans.setdefault(t.source_track, []).append((t.first_frame + 1, t.last_frame + 1,
                                                     t.track_id))
    out: dict[int, Detections] = {}
    for frame, dets in tracks.items():
        ids = np.array([next((new for lo, hi, new in spans.get(int(tid), ())
                              if lo <= frame <= hi), -1) for tid in dets.track_ids], np.int64)
        keep = ids > 0
        part = dets.subset(keep)
        part.track_ids = ids[keep]
        out[frame] = part
    return out


def _embed(found: Detections, frame: Frame, embedder: Embedder,
           min_height: float) -> Detections:
    """``found`` with embeddings: those of boxes at least ``min_height`` tall computed, the rest
    zero (the tracker treats a zero embedding as unknown)."""
    if not len(found):
        return Detections(found.boxes, found.scores, found.track_ids,
                          np.zeros((0, 1), np.float32))
    rows = np.flatnonzero(found.heights >= min_height)
    crops = [_cut(frame.image, found.boxes[r]) for r in rows]
    vectors = embedder(crops) if crops else None
    dim = vectors.shape[1] if vectors is not None else 1
    embeddings = np.zeros((len(found), dim), np.float32)
    if vectors is not None:
        embeddings[rows] = vectors
    return Detections(found.boxes, found.scores, found.track_ids, embeddings)


def _cut(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    crop = cut_box(image, box)
    return crop if crop.size else image[:1, :1]
