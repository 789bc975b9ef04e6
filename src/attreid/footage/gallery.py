"""Tracklets into a gallery index: crop files, a reduced full frame for context, embeddings and
attributes of the chosen crops, and one :class:`~attreid.search.sightings.Sighting` per crop.

Each source goes in as one atomic append (rows, sightings and the record that the source is in,
in one SQLite transaction), keyed by the source's identity (camera, real path, size, modification
time and the settings that shape its crops). A rerun skips the sources already in; a source whose
ingest was killed is redone from the start, writing the same crop files, so the index ends as an
uninterrupted run leaves it, without duplicates.

Crop files live in the index folder: ``INDEX/footage/<camera>/<source id>/c<N>_f<frame>_t<track>.jpg``
(``N``: the camera's number in the index, ``frame``: 0-based frame index in the source); the
frames beside them in ``frames/f<frame>.jpg`` (at most :data:`FRAME_SIDE` pixels wide).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from attreid.footage.detections import FootageError
from attreid.footage.pipeline import SourceTracks
from attreid.footage.sources import SourceSpec, _cv2, read_frames
from attreid.schema import TASKS
from attreid.search.index import GalleryIndex
from attreid.search.sightings import Sighting, insert_sightings, mark_ingested
from attreid.utils.files import atomic_write_bytes

FOOTAGE_DIR = "footage"
FRAME_SIDE = 640
JPEG_QUALITY = 92


def source_identity(spec: SourceSpec) -> str:
    """The source itself, whatever the settings: sha256 of its camera, real path, size and
    modification time (ns)."""
    path = spec.path.resolve()
    stat = path.stat()
    text = json.dumps([spec.camera, str(path), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(text.encode()).hexdigest()


def source_key(spec: SourceSpec, settings: dict[str, Any]) -> str:
    """The identity of a source in an index: sha256 of :func:`source_identity`, its start time,
    frame rate and the crop-shaping ``settings`` (JSON)."""
    text = json.dumps([source_identity(spec), spec.start, spec.fps, settings], sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def ingested_sources(index: GalleryIndex) -> dict[str, dict[str, Any]]:
    """key -> summary of every source in ``index``."""
    return index.ingested()


def is_ingested(index: GalleryIndex, key: str) -> bool:
    """Whether the source ``key`` is already in ``index``."""
    return key in ingested_sources(index)


NAMED_CAMERAS_FROM = 1000
"""Cameras named by a word get numbers from here up, so they never take the number of a camera
named by a number (in this run or a later one)."""


def camera_numbers(info: dict[str, Any], names: list[str]) -> dict[str, int]:
    """The index's camera number of each camera name: a name that is a number keeps it; other
    names keep the number ``info["camera_names"]`` records, or get the next free one from
    :data:`NAMED_CAMERAS_FROM` up.

    Raises:
        FootageError: a numeric name whose number another camera of the index already has.
    """
    known = {str(k): int(v) for k, v in (info.get("camera_names") or {}).items()}
    taken = {v: k for k, v in known.items()}
    out: dict[str, int] = {}
    for name in names:
        if name in known:
            out[name] = known[name]
        elif re.fullmatch(r"\d{1,9}", name):
            if int(name) in taken:
                raise FootageError(f"camera {name!r}: number {int(name)} is camera "
                                   f"{taken[int(name)]!r} of this index; give another id")
            out[name] = int(name)
    used = set(known.values()) | set(out.values())
    number = max([NAMED_CAMERAS_FROM - 1, *(u for u in used if u >= NAMED_CAMERAS_FROM)]) + 1
    for name in names:
        if name not in out:
            out[name] = number
            number += 1
    return out


@dataclass
class _Written:
    paths: list[Path]
    crops: list[np.ndarray]
    sightings: list[Sighting]


def write_crops(root: Path, result: SourceTracks, key: str, camera: int) -> _Written:
    """Write the chosen crops of every tracklet, and the frames they come from (reduced to
    :data:`FRAME_SIDE` pixels wide, read again from the source), under ``root/footage``."""
    cv2 = _cv2()
    folder = root / FOOTAGE_DIR / _safe(result.spec.camera) / key[:12]
    needed = {crop.frame for t in result.tracklets for crop in t.crops}
    frame_files = _write_frames(cv2, result.spec, needed, folder / "frames")
    written = _Written([], [], [])
    for tracklet in result.tracklets:
        for crop in tracklet.crops:
            path = folder / f"c{camera}_f{crop.frame:06d}_t{tracklet.track_id:04d}.jpg"
            atomic_write_bytes(path, _jpeg(cv2, crop.image))
            written.paths.append(path)
            written.crops.append(crop.image)
            frame_file = frame_files.get(crop.frame)
            written.sightings.append(Sighting(
                result.spec.camera, str(result.spec.path), crop.time, tracklet.track_id,
                tuple(float(v) for v in crop.box), crop.score, crop.quality,
                None if frame_file is None else str(frame_file)))
    return written


def _write_frames(cv2: Any, spec: SourceSpec, needed: set[int], folder: Path
                  ) -> dict[int, Path]:
    """Frames ``needed`` (0-based indices) of ``spec`` as reduced JPEG files."""
    out: dict[int, Path] = {}
    if not needed:
        return out
    last = max(needed)
    for frame in read_frames(spec, last=last):
        if frame.index in needed:
            image = frame.image
            if image.shape[1] > FRAME_SIDE:
                height = round(image.shape[0] * FRAME_SIDE / image.shape[1])
                image = cv2.resize(image, (FRAME_SIDE, height), interpolation=cv2.INTER_AREA)
            path = folder / f"f{frame.index:06d}.jpg"
            atomic_write_bytes(path, _jpeg(cv2, image, 85))
            out[frame.index] = path
    return out


def add_source(index: GalleryIndex, predictor: Any, result: SourceTracks, key: str,
               summary: dict[str, Any]) -> int:
    """Embed the chosen crops of ``result`` and append them, their sightings and the record of
    the source to ``index`` in one transaction; returns the crops added (0 when the source was
    already in).

    Raises:
        GalleryIndexError: the predictor's checkpoint did not make the index.
    """
    index.check_checkpoint(predictor.checkpoint, predictor.checkpoint_sha256)
    if is_ingested(index, key):
        return 0
    numbers = camera_numbers(index.info, [result.spec.camera])
    written = write_crops(index.root, result, key, numbers[result.spec.camera])
    dim = int(predictor.embedding_dim)
    if written.crops:
        prediction = predictor.predict(written.crops, channels="bgr")
        embeddings = np.asarray(prediction.embeddings, np.float32)
        probabilities = {t.name: np.asarray(prediction.probabilities[t.name]) for t in TASKS}
    else:
        embeddings = np.zeros((0, dim), np.float32)
        probabilities = {t.name: np.zeros((0, len(t.classes))) for t in TASKS}
    names = {**(index.info.get("camera_names") or {}), **numbers}

    def on_rows(db: Any, first_id: int) -> dict[str, Any]:
        insert_sightings(db, first_id, written.sightings)
        mark_ingested(db, key, {**summary, "crops": len(written.paths)})
        return {"camera_names": names}

    index.append_arrays(written.paths, embeddings, probabilities, on_rows)
    return len(written.paths)


def _jpeg(cv2: Any, image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise FootageError(f"cannot encode a {image.shape} crop as JPEG")
    return data.tobytes()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:64] or "camera"
