"""Detectors: a frame in, the people in it out (:class:`~attreid.footage.detections.Detections`,
boxes xyxy in frame pixels, scores in [0, 1]).

Every detector has ``detect(frame) -> Detections`` and ``reset()`` (between sources). The
choice, by name through :func:`build_detector`:

* ``"hog"``: :class:`~attreid.footage.detect_hog.HogDetector`, OpenCV's HOG people detector
  focused by the static camera's motion (the default; recall 0.84 / precision 0.88 at about
  20 frames/s on PETS09-S2L1 at 480 x 360, docs/results/footage_detection.md);
* ``"motion"``: :class:`~attreid.footage.detect_motion.MotionDetector`, foreground blobs alone
  (for synthetic footage, or cameras where HOG fails);
* ``"mot"``: :class:`MotFileDetector`, precomputed detections from a MOTChallenge ``det.txt``;
* ``"onnx"``: :class:`~attreid.footage.detect_onnx.OnnxDetector`, the user's own ONNX detector.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from attreid.footage.detect_boxes import height_ok
from attreid.footage.detect_hog import HogDetector
from attreid.footage.detect_motion import MotionDetector
from attreid.footage.detect_onnx import OnnxDetector
from attreid.footage.detections import Detections, FootageError
from attreid.footage.mot import read_mot
from attreid.footage.sources import Frame


class Detector(Protocol):
    """What every detector offers."""

    def detect(self, frame: Frame) -> Detections:
        """People in ``frame``: boxes (N, 4) xyxy in frame pixels, scores (N,) in [0, 1],
        track ids -1."""

    def reset(self) -> None:
        """Forget what was learnt from the frames so far (a background model); call between
        sources."""


class MotFileDetector:
    """Precomputed detections from a MOTChallenge file (``det.txt``: ``frame, -1, left, top,
    width, height, conf, ...``).

    Args:
        path: the file.
        scale: multiply its boxes by this (e.g. 0.625 for detections made on 768 x 576 frames
            and a 480 x 360 video).
        frame_offset: the file's frame number of a frame is ``frame.index + 1 + frame_offset``
            (MOTChallenge numbers frames from 1).
        min_score: drop rows whose ``conf`` (clipped to [0, 1]) is below this.
        min_height: drop boxes shorter than this, frame pixels.

    Raises:
        FootageError: a missing file or a bad line (from :func:`~attreid.footage.mot.read_mot`).
    """

    def __init__(self, path: Path | str, scale: float = 1.0, frame_offset: int = 0,
                 min_score: float = 0.0, min_height: float = 0.0) -> None:
        if scale <= 0:
            raise FootageError(f"{path}: scale must be positive, got {scale}")
        self.path, self.scale, self.frame_offset = Path(path), scale, frame_offset
        self.min_score, self.min_height = min_score, min_height
        self._rows = read_mot(self.path, scale=scale, keep_ignored=True)

    def reset(self) -> None:
        """Nothing to forget: the file is indexed by frame number."""

    def detect(self, frame: Frame) -> Detections:
        """The file's rows of this frame (track ids -1: a tracker assigns them)."""
        rows = self._rows.get(frame.index + 1 + self.frame_offset, Detections())
        keep = (rows.scores >= self.min_score) & height_ok(rows.boxes, self.min_height, None)
        found = rows.subset(keep)
        return Detections(found.boxes, found.scores, np.full(len(found), -1, np.int64))


DETECTORS: dict[str, Callable[..., Any]] = {
    "hog": HogDetector,
    "motion": MotionDetector,
    "mot": MotFileDetector,
    "onnx": OnnxDetector,
}


def build_detector(name: str, **options: Any) -> Detector:
    """The detector registered as ``name`` in :data:`DETECTORS`, built with ``options`` (its
    constructor's keyword arguments).

    Raises:
        FootageError: an unknown name (the message lists the names), or options the detector
            does not take.
    """
    if name not in DETECTORS:
        raise FootageError(f"detector {name!r}: choose one of {', '.join(DETECTORS)}")
    try:
        return DETECTORS[name](**options)
    except TypeError as exc:
        raise FootageError(f"detector {name!r}: bad options {sorted(options)} ({exc})") from None
