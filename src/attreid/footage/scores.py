"""How well footage became a gallery: each tracklet's true identity from ground truth, and
cross-camera retrieval of tracklets (a person's tracklets from the other cameras should rank
first when one of its tracklets is the query), scored with the standard re-ID protocol
(:func:`attreid.metrics.reid.reid_metrics`, Market-1501's camera rule: same person, same camera
ignored).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from attreid.footage.detections import Detections, box_iou
from attreid.metrics.distance import pairwise_distance
from attreid.metrics.reid import ReidResult, reid_metrics
from attreid.search.index import GalleryIndex


@dataclass(frozen=True)
class IndexedTracklet:
    """The crops of one tracklet in an index: camera name, track id, row ids, frames (0-based),
    boxes (K, 4) xyxy and the mean of their stored vectors (D,)."""

    camera: str
    source: str
    track: int
    ids: tuple[int, ...]
    frames: tuple[int, ...]
    boxes: np.ndarray
    vector: np.ndarray


def indexed_tracklets(index: GalleryIndex) -> list[IndexedTracklet]:
    """Every tracklet of an index made by ``attreid ingest`` (rows without a sighting are left
    out), ordered by camera, source and track."""
    ids = index.ids().tolist()
    sightings = index.sightings(ids)
    entries = {e.id: e for e in index.entries(list(sightings))}
    groups: dict[tuple[str, str, int], list[int]] = {}
    for i, s in sightings.items():
        groups.setdefault((s.camera_name, s.source, s.track), []).append(i)
    out = []
    for (camera, source, track), rows in sorted(groups.items()):
        vectors = index.vectors_of(rows)
        out.append(IndexedTracklet(camera, source, track, tuple(rows),
                                   tuple(int(entries[i].frame or 0) for i in rows),
                                   np.array([sightings[i].box for i in rows], np.float32),
                                   vectors.mean(axis=0)))
    return out


def true_identity(frames: tuple[int, ...], boxes: np.ndarray,
                  truth: dict[int, Detections], iou: float = 0.5) -> int:
    """The ground-truth id most of a tracklet's crops overlap (IoU >= ``iou``; ``truth`` by
    1-based frame, crop frames 0-based), 0 when none does (a false track)."""
    votes: Counter[int] = Counter()
    for frame, box in zip(frames, boxes):
        gt = truth.get(frame + 1)
        if gt is None or not len(gt):
            continue
        overlap = box_iou(box[None], gt.boxes)[0]
        best = int(np.argmax(overlap))
        if overlap[best] >= iou:
            votes[int(gt.track_ids[best])] += 1
    return votes.most_common(1)[0][0] if votes else 0


def cross_camera_scores(tracklets: list[IndexedTracklet], identities: list[int],
                        metric: str) -> ReidResult:
    """mAP, CMC and mINP of each true tracklet (identity > 0) as a query against every other
    tracklet (identity 0: a false track, counted as a wrong match), same-camera tracklets of
    the same person ignored (Market-1501's rule).

    Raises:
        ValueError: no tracklet has a match in another camera.
    """
    vectors = np.stack([t.vector for t in tracklets]).astype(np.float32)
    if metric == "cosine":
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    cameras = {name: n for n, name in enumerate(sorted({t.camera for t in tracklets}))}
    cams = np.array([cameras[t.camera] for t in tracklets])
    ids = np.asarray(identities)
    queries = np.flatnonzero(ids > 0)
    dist = pairwise_distance(vectors[queries], vectors, metric="euclidean")
    return reid_metrics(dist, ids[queries], ids, cams[queries], cams, protocol="market",
                        exclude=queries)
