"""From tracks to gallery entries: the crops of each track, scored, split where the appearance
jumps, short tracks dropped, and the best few crops of each kept.

A :class:`TrackletBuilder` follows the tracked detections of one source frame by frame
(:meth:`TrackletBuilder.add`), keeping per track a bounded set of candidate crops and a thinned
sequence of embeddings, so memory stays bounded however long the video; :meth:`finish` returns
the :class:`Tracklet` s.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attreid.footage.detections import Detections, box_iou, cut_box
from attreid.footage.sources import Frame


@dataclass(frozen=True)
class Crop:
    """One sighting kept for the gallery.

    Attributes:
        frame: 0-based frame index in the source; time: seconds since the Unix epoch (UTC).
        box: (4,) xyxy in frame pixels; score: detector score; quality: :func:`crop_quality`.
        image: (h, w, 3) uint8 BGR pixels of the box (padded by nothing, clipped to the frame).
        embedding: (D,) float32 where computed.
    """

    frame: int
    time: float
    box: np.ndarray
    score: float
    quality: float
    image: np.ndarray
    embedding: np.ndarray | None


@dataclass
class Tracklet:
    """One person's continuous track in one camera (after splitting)."""

    camera: str
    source: str
    track_id: int
    first_frame: int
    last_frame: int
    first_time: float
    last_time: float
    observations: int
    crops: list[Crop]
    source_track: int = -1  # the tracker's id (a split track's parts share it)


@dataclass
class TrackletSettings:
    """Knobs of :class:`TrackletBuilder`.

    Attributes:
        min_observations: tracks seen in fewer frames are dropped (short tracks are mostly
            false detections or fragments): 15, 1.5 s at 10 frames/s. On PETS09-S2L1 (default
            HOG, motion only) 5 gave 12 tracks and 12 id switches for 10 people, 15 gave 10
            and 10 at the same MOTA (80.0).
        crops_per_track: best crops kept per tracklet for the gallery (a few views of one
            person: more adds rows, not recall, since the search groups a track's crops).
        candidates: candidate crops held per track while reading (bounded memory).
        min_height: crops lower than this many pixels are never kept (re-ID models see 128x64
            or 256x128; a 30-px person carries little identity).
        split_distance: cosine distance between the mean embeddings of consecutive windows
            above which a track is split (a tracker that swapped two people); ``None``: never.
        window: observations per window of that comparison.
    """

    min_observations: int = 15
    crops_per_track: int = 4
    candidates: int = 24
    min_height: float = 24.0
    split_distance: float | None = 0.5
    window: int = 8


def crop_quality(box: np.ndarray, score: float, frame_size: tuple[int, int],
                 overlap: float) -> float:
    """How good a crop is for the gallery, in [0, 1]: the detector's ``score`` times a size
    term (full at 128 px height), an aspect term (people are about 2.5x as tall as wide;
    1 within 1.5-4), a border term (0.3 where the box touches the frame edge: the person is cut)
    and ``1 - overlap`` (the largest IoU with another person's box)."""
    width, height = frame_size
    w, h = float(box[2] - box[0]), float(box[3] - box[1])
    size = min(h / 128.0, 1.0)
    ratio = h / max(w, 1e-6)
    aspect = 1.0 if 1.5 <= ratio <= 4.0 else 0.5
    edge = min(box[0], box[1], width - box[2], height - box[3])
    border = 0.3 if edge <= 1.0 else 1.0
    return float(score) * size * aspect * border * (1.0 - float(overlap))


@dataclass
class _Open:
    observations: list[tuple[int, float]] = field(default_factory=list)  # (frame, time)
    embeddings: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (obs no., emb)
    candidates: list[Crop] = field(default_factory=list)


class TrackletBuilder:
    """Collects the tracked detections of one source into tracklets."""

    def __init__(self, camera: str, source: str, settings: TrackletSettings | None = None):
        self.camera = camera
        self.source = source
        self.settings = settings or TrackletSettings()
        self._open: dict[int, _Open] = {}

    def add(self, tracked: Detections, frame: Frame) -> None:
        """Record one frame's tracked detections (``track_ids`` > 0; embeddings optional)."""
        if not len(tracked):
            return
        iou = box_iou(tracked.boxes, tracked.boxes)
        np.fill_diagonal(iou, 0.0)
        overlap = iou.max(axis=1)
        for row, tid in enumerate(tracked.track_ids.tolist()):
            track = self._open.setdefault(int(tid), _Open())
            track.observations.append((frame.index, frame.time))
            emb = None if tracked.embeddings is None else tracked.embeddings[row]
            if emb is not None:
                track.embeddings.append((len(track.observations) - 1, emb.astype(np.float32)))
            box = tracked.boxes[row]
            if box[3] - box[1] < self.settings.min_height:
                continue
            quality = crop_quality(box, float(tracked.scores[row]), frame.size,
                                   float(overlap[row]))
            self._offer(track, frame, box, float(tracked.scores[row]), quality, emb)

    def _offer(self, track: _Open, frame: Frame, box: np.ndarray, score: float,
               quality: float, emb: np.ndarray | None) -> None:
        limit = self.settings.candidates
        if len(track.candidates) >= limit and quality <= min(c.quality for c in track.candidates):
            return
        image = cut_box(frame.image, box).copy()
        if image.size == 0:
            return
        track.candidates.append(Crop(frame.index, frame.time, box.copy(), score, quality,
                                     image, emb))
        if len(track.candidates) > limit:
            # keep the best, but spread over time: drop the worst of the closest pair in time
            track.candidates.sort(key=lambda c: c.frame)
            gaps = np.diff([c.frame for c in track.candidates])
            i = int(np.argmin(gaps))
            worse = i if track.candidates[i].quality < track.candidates[i + 1].quality else i + 1
            track.candidates.pop(worse)

    def finish(self) -> list[Tracklet]:
        """The tracklets (split, filtered, best crops chosen), ordered by first frame."""
        out: list[Tracklet] = []
        for tid, track in sorted(self._open.items()):
            for part_obs, part_crops in self._split(track):
                if len(part_obs) < self.settings.min_observations or not part_crops:
                    continue
                best = sorted(part_crops, key=lambda c: -c.quality)
                chosen = sorted(best[:self.settings.crops_per_track], key=lambda c: c.frame)
                out.append(Tracklet(self.camera, self.source, tid, part_obs[0][0],
                                    part_obs[-1][0], part_obs[0][1], part_obs[-1][1],
                                    len(part_obs), chosen, tid))
        out.sort(key=lambda t: (t.first_frame, t.source_track))
        used: set[int] = set()
        spare = max(self._open, default=0) + 1
        for tracklet in out:  # the second part of a split track gets a new id
            if tracklet.track_id in used:
                tracklet.track_id, spare = spare, spare + 1
            used.add(tracklet.track_id)
        self._open = {}
        return out

    def _split(self, track: _Open) -> list[tuple[list[tuple[int, float]], list[Crop]]]:
        cuts = _appearance_cuts(track.embeddings, self.settings)
        if not cuts:
            return [(track.observations, track.candidates)]
        frames = [track.observations[i][0] for i in cuts]
        bounds = [0, *cuts, len(track.observations)]
        edges = [-1, *frames, 1 << 62]
        return [(track.observations[a:b],
                 [c for c in track.candidates if lo <= c.frame < hi])
                for a, b, lo, hi in zip(bounds, bounds[1:], edges[:-1], edges[1:])]


def _appearance_cuts(embeddings: list[tuple[int, np.ndarray]],
                     settings: TrackletSettings) -> list[int]:
    """Observation numbers where the track's appearance jumps: the cosine distance between the
    means of the ``window`` embeddings before and after a point, where it peaks above
    ``split_distance`` (the strongest jump first, others at least a window away)."""
    w = settings.window
    if settings.split_distance is None or len(embeddings) < 2 * w:
        return []
    x = np.stack([e for _, e in embeddings]).astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sums = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, axis=0)])
    points = np.arange(w, len(x) - w + 1)
    before = sums[points] - sums[points - w]  # (P, D) window sums
    after = sums[points + w] - sums[points]
    cos = (before * after).sum(1) / np.maximum(
        np.linalg.norm(before, axis=1) * np.linalg.norm(after, axis=1), 1e-12)
    distance = 1.0 - cos
    cuts: list[int] = []
    while distance.size and distance.max() > settings.split_distance:
        best = int(np.argmax(distance))
        cuts.append(embeddings[int(points[best])][0])
        distance[max(best - w + 1, 0):best + w] = -1.0
    return sorted(cuts)
