"""Where frames come from: video files and frame folders, one camera each.

A :class:`SourceSpec` names a source, its camera and the wall-clock time of its first frame;
:func:`read_frames` yields its :class:`Frame` s (every ``stride``-th frame, or about
``target_fps`` a second), each with its 0-based index in the source and its timestamp. Several
sources come from flags or a manifest (:func:`read_manifest`: CSV or YAML rows of ``path,
camera, start[, fps]``).

Times: ``start`` is ISO 8601 (``2026-12-01T09:30:00``, optionally with an offset such as
``+01:00``); a time without an offset is taken as UTC. A frame's ``time`` is seconds since the
Unix epoch (UTC): ``start`` plus the decoder's position (videos: the container's timestamps, so
a variable frame rate gives true times; folders: ``index / fps``).
"""

from __future__ import annotations

import csv
import re
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from attreid.footage.detections import FootageError
from attreid.search.sightings import iso_time

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".webm", ".wmv",
                  ".ts")
FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_PIXELS = 8192 * 8192
"""Frames larger than this are refused (4K, 3840x2160, passes)."""


def _cv2() -> Any:
    try:
        import cv2
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise FootageError("footage needs OpenCV: pip install 'attreid[footage]' "
                           "(opencv-python-headless 4.x)") from exc
    return cv2


@dataclass(frozen=True)
class Frame:
    """One decoded frame.

    Attributes:
        camera: the camera id of its source.
        index: 0-based position in its source (all frames counted, strided or not).
        time: wall-clock time, seconds since the Unix epoch (UTC).
        image: (H, W, 3) uint8, **BGR** channel order (as OpenCV decodes).
        source: the video file or frame folder it comes from.
    """

    camera: str
    index: int
    time: float
    image: np.ndarray
    source: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass(frozen=True)
class SourceSpec:
    """A source to read: a video file or a folder of frames, its camera, start and rate.

    Attributes:
        path: video file or frame folder.
        camera: camera id (unique within a run).
        start: wall-clock time of the first frame, seconds since the Unix epoch (UTC).
        fps: frames per second of a frame folder (required there); for a video, ``None`` uses
            the container's timestamps.
    """

    path: Path
    camera: str
    start: float = 0.0
    fps: float | None = None


def parse_time(text: str | float | int | datetime, where: str = "start") -> float:
    """Seconds since the Unix epoch of an ISO 8601 time (UTC when it has no offset), a
    ``datetime``, or a number of seconds.

    Raises:
        FootageError: not a time; the message names ``where``.
    """
    if isinstance(text, datetime):
        moment = text
    elif isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    else:
        raw = str(text).strip()
        if re.fullmatch(r"-?\d+(\.\d+)?", raw):
            return float(raw)
        try:
            moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise FootageError(f"{where}: {raw!r} is not a time; write ISO 8601 such as "
                               "2026-12-01T09:30:00 (UTC) or 2026-12-01T09:30:00+01:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


format_time = iso_time
"""ISO 8601 UTC with milliseconds of seconds since the epoch, e.g. ``2026-12-01T09:30:00.400Z``."""


def read_manifest(path: Path | str) -> list[SourceSpec]:
    """Sources listed in a CSV (header ``path,camera,start[,fps]``) or YAML (a list of mappings
    with those keys) file; relative paths are relative to the manifest's folder.

    Raises:
        FootageError: missing file or column, a bad row (named by its line), a camera id used
            twice.
    """
    path = Path(path)
    if not path.is_file():
        raise FootageError(f"{path}: manifest not found")
    rows = _yaml_rows(path) if path.suffix.lower() in (".yaml", ".yml") else _csv_rows(path)
    specs = [_spec(row, path.parent, f"{path}: {where}") for where, row in rows]
    check_cameras(specs)
    return specs


def _csv_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("path", "camera") if c not in (reader.fieldnames or [])]
        if missing:
            raise FootageError(f"{path}: manifest lacks the column(s) {', '.join(missing)}; "
                               "expected a header path,camera,start[,fps]")
        return [(f"line {i + 2}", row) for i, row in enumerate(reader)
                if any((v or "").strip() for v in row.values() if isinstance(v, str))]


def _yaml_rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise FootageError(f"{path}: not valid YAML ({exc})") from None
    if isinstance(data, dict) and "sources" in data:
        data = data["sources"]
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise FootageError(f"{path}: expected a list of sources (path, camera, start, fps)")
    return [(f"source {i + 1}", row) for i, row in enumerate(data)]


def _spec(row: dict[str, Any], base: Path, where: str) -> SourceSpec:
    raw_path = str(row.get("path") or "").strip()
    camera = str(row.get("camera") if row.get("camera") is not None else "").strip()
    if not raw_path or not camera:
        raise FootageError(f"{where}: every source needs a path and a camera")
    fps = row.get("fps")
    fps_value = None
    if fps not in (None, ""):
        try:
            fps_value = float(fps)
        except (TypeError, ValueError):
            raise FootageError(f"{where}: fps {fps!r} is not a number") from None
        if not fps_value > 0:
            raise FootageError(f"{where}: fps must be positive, got {fps!r}")
    start = row.get("start")
    path = Path(raw_path).expanduser()
    return SourceSpec(path if path.is_absolute() else base / path, camera,
                      parse_time(start, where) if start not in (None, "") else 0.0, fps_value)


def check_cameras(specs: list[SourceSpec]) -> None:
    """Raise :class:`FootageError` when two sources share a camera id."""
    seen: dict[str, Path] = {}
    for spec in specs:
        if spec.camera in seen:
            raise FootageError(f"camera {spec.camera!r} is used twice ({seen[spec.camera]} and "
                               f"{spec.path}); give each source its own camera id")
        seen[spec.camera] = spec.path


def read_frames(spec: SourceSpec, stride: int = 1, target_fps: float | None = None,
                first: int = 0, last: int | None = None) -> Iterator[Frame]:
    """The frames of a source, every ``stride``-th (or thinned to about ``target_fps``), from
    index ``first`` up to ``last`` (inclusive, 0-based).

    Raises:
        FootageError: the path is missing, not a video or frame folder, cannot be opened, holds
            no frame, or a folder has no ``fps``.
    """
    if stride < 1:
        raise FootageError(f"stride must be at least 1, got {stride}")
    if spec.path.is_dir():
        frames = _folder_frames(spec)
    elif spec.path.is_file():
        frames = _video_frames(spec)
    else:
        raise FootageError(f"{spec.path}: video or frame folder not found")
    yield from _thin(frames, stride, target_fps, first, last, spec)


def _thin(frames: Iterator[Frame], stride: int, target_fps: float | None, first: int,
          last: int | None, spec: SourceSpec) -> Iterator[Frame]:
    next_time: float | None = None
    count = 0
    for frame in frames:
        count += 1
        if frame.index < first:
            continue
        if last is not None and frame.index > last:
            break
        if target_fps:
            if next_time is not None and frame.time < next_time - 1e-6:
                continue
            next_time = (frame.time if next_time is None else next_time) + 1.0 / target_fps
        elif (frame.index - first) % stride:
            continue
        yield frame
    if count == 0:
        raise FootageError(f"{spec.path}: no frame could be decoded (empty, truncated or not a "
                           "video); check the file, e.g. with ffprobe")


def _video_frames(spec: SourceSpec) -> Iterator[Frame]:
    cv2 = _cv2()
    capture = cv2.VideoCapture(str(spec.path))
    if not capture.isOpened():
        raise FootageError(f"{spec.path}: cannot open as a video (OpenCV's FFmpeg backend "
                           "reads MP4, AVI, MKV, MOV, ...); is it a video, and complete?")
    declared = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    fps = spec.fps or float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
    index = 0
    try:
        while True:
            ok, image = capture.read()
            if not ok or image is None:
                break
            _check_size(image, spec.path, index)
            msec = float(capture.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
            offset = index / fps if spec.fps or msec <= 0 and fps > 0 else msec / 1000.0
            yield Frame(spec.camera, index, spec.start + offset, image, str(spec.path))
            index += 1
    finally:
        capture.release()
    if declared and 0 < index < declared - 1:
        warnings.warn(f"{spec.path}: decoded {index} of the {declared} frames the container "
                      "declares (truncated or damaged); the frames read are kept",
                      stacklevel=2)


def _frame_number(path: Path) -> int | None:
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else None


def _folder_frames(spec: SourceSpec) -> Iterator[Frame]:
    cv2 = _cv2()
    if not spec.fps:
        raise FootageError(f"{spec.path}: a frame folder needs its frame rate (--fps, or an "
                           "fps column in the manifest)")
    files = sorted((p for p in spec.path.iterdir()
                    if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES),
                   key=lambda p: (_frame_number(p) is None, _frame_number(p) or 0, p.name))
    if not files:
        raise FootageError(f"{spec.path}: no frames ({', '.join(FRAME_SUFFIXES)}) in the folder")
    _warn_gaps(files, spec.path)
    size: tuple[int, ...] | None = None
    for index, path in enumerate(files):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            warnings.warn(f"{path}: cannot decode this frame; skipped", stacklevel=2)
            continue
        _check_size(image, path, index)
        if size is not None and image.shape != size:
            warnings.warn(f"{path}: frame of {image.shape[1]}x{image.shape[0]} in a folder of "
                          f"{size[1]}x{size[0]} frames; kept as it is", stacklevel=2)
        size = size or image.shape
        yield Frame(spec.camera, index, spec.start + index / spec.fps, image, str(spec.path))


def _warn_gaps(files: list[Path], folder: Path) -> None:
    numbers = [_frame_number(p) for p in files]
    if None in numbers or len(numbers) < 2:
        return
    steps = np.diff(np.asarray(numbers))
    gaps = int((steps > 1).sum())
    if gaps:
        warnings.warn(f"{folder}: frame numbers jump {gaps} time(s) (e.g. after "
                      f"{files[int(np.argmax(steps > 1))].name}); times assume the frames are "
                      "consecutive at --fps", stacklevel=3)


def _check_size(image: np.ndarray, path: Path, index: int) -> None:
    height, width = image.shape[:2]
    if height * width > MAX_PIXELS:
        raise FootageError(f"{path}: frame {index} is {width}x{height}, over the "
                           f"{MAX_PIXELS:,}-pixel limit")
