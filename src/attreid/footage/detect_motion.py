"""People from motion: a static camera's background model, foreground blobs, person boxes.

:class:`MotionDetector` keeps an OpenCV background subtractor (KNN or MOG2) and turns the
foreground of each frame into person boxes: connected blobs, filtered by size and shape, blobs
too wide for one person split into side-by-side people. It needs no appearance model, so it
finds drawn people in synthetic footage as well as real ones; :class:`~attreid.footage.
detect_hog.HogDetector` uses its foreground to know where to look.

Numbers in the docstrings were measured on PETS09-S2L1 (vtest.mp4, 480 x 360, frames 1-400,
IoU 0.5; docs/results/footage_detection.md).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from attreid.footage.detect_boxes import height_ok, in_roi, parse_roi
from attreid.footage.detections import Detections, FootageError
from attreid.footage.sources import Frame, _cv2

SUBTRACTORS = ("knn", "mog2")
RNG_SEED = 12345
"""Seed of OpenCV's random generator for each new background model."""


class MotionDetector:
    """Foreground blobs of a static camera as person boxes (scores: the blob's fill, in [0, 1]).

    Args:
        subtractor: ``"knn"`` (OpenCV's KNN model; 0.67 recall / 0.75 precision alone, against
            0.63 / 0.72 for ``"mog2"`` at the same settings) or ``"mog2"``.
        history: frames the background model remembers (OpenCV's default 500; 200 changed
            nothing measurable).
        threshold: the subtractor's distance threshold (``dist2Threshold`` for KNN, default 400,
            ``varThreshold`` for MOG2, default 16); ``None`` keeps OpenCV's default.
        mask_scale: the model runs on the frame resized by this factor: 0.5 costs a quarter of
            full size (2.7 against 12 ms a frame on this CPU under load) for 3 points of recall
            alone and nothing once HOG confirms.
        open_size: an opening (odd size in mask pixels, 0: none) to remove speckle; at half size
            any opening or closing lost recall (-9 points with a 3 x 3 opening) because people
            are only ~24 px tall there.
        close_size: a ``(width, height)`` closing to join a body split by an occluder; ``None``.
        min_height: smallest person, frame pixels (PETS people are 37-73 px at 480 x 360; 28
            keeps all and drops the far walkers the ground truth does not annotate).
        max_height: largest person, frame pixels (``None``: no limit).
        aspect: ``(min, max)`` width / height of a one-person blob (people here: 0.29-0.43,
            5th-95th percentile; blobs are looser).
        split_aspect: a blob wider than ``aspect[1]`` is cut into ``round(aspect /
            split_aspect)`` (at least 2) equal columns, one person each (+2 points recall).
        min_fill: smallest share of foreground pixels in a blob's box.
        shadow_value: mask values at or below it (the subtractors mark shadows 127) count as
            background; shadow detection is on.
        roi: keep people whose foot point lies in this rectangle ``(x1, y1, x2, y2)`` or polygon
            ``[(x, y), ...]``, frame pixels.
        max_foreground: a mask with more foreground than this share is taken as empty: the
            model's first frames (KNN marks the whole first frames foreground), a light
            switched on, a camera shaken; people in the frame then show as ghosts for about 15
            frames while the model learns.

    Raises:
        FootageError: an unknown subtractor, a bad size or region.
    """

    def __init__(self, subtractor: str = "knn", history: int = 500,
                 threshold: float | None = None, mask_scale: float = 0.5, open_size: int = 0,
                 close_size: tuple[int, int] | None = None, min_height: float = 28.0,
                 max_height: float | None = None, aspect: tuple[float, float] = (0.2, 0.8),
                 split_aspect: float = 0.42, min_fill: float = 0.0, shadow_value: int = 200,
                 roi: Sequence[float] | Sequence[Sequence[float]] | None = None,
                 max_foreground: float = 0.5) -> None:
        if subtractor not in SUBTRACTORS:
            raise FootageError(f"background subtractor {subtractor!r}: choose one of "
                               f"{', '.join(SUBTRACTORS)}")
        if not 0 < mask_scale <= 1:
            raise FootageError(f"mask_scale must be in (0, 1], got {mask_scale}")
        if history < 1 or min_height < 1 or split_aspect <= 0 or not aspect[0] < aspect[1]:
            raise FootageError("motion detector: history and min_height must be at least 1, "
                               "split_aspect positive and aspect (min, max) increasing; got "
                               f"{history}, {min_height}, {split_aspect}, {aspect}")
        self.subtractor, self.history, self.threshold = subtractor, history, threshold
        self.mask_scale, self.open_size, self.close_size = mask_scale, open_size, close_size
        self.min_height, self.max_height = min_height, max_height
        self.aspect, self.split_aspect, self.min_fill = aspect, split_aspect, min_fill
        self.shadow_value, self.max_foreground = shadow_value, max_foreground
        self.roi = parse_roi(roi)
        self._model: Any = None

    def reset(self) -> None:
        """Forget the background (call between sources)."""
        self._model = None

    def _new_model(self) -> Any:
        cv2 = _cv2()
        # the subtractors draw from OpenCV's global random generator: seed it per source, so a
        # source gives the same boxes whatever was processed before it (an ingest resumed
        # after a kill must give the index an uninterrupted run gives)
        cv2.setRNGSeed(RNG_SEED)
        if self.subtractor == "knn":
            return cv2.createBackgroundSubtractorKNN(
                self.history, 400.0 if self.threshold is None else self.threshold, True)
        return cv2.createBackgroundSubtractorMOG2(
            self.history, 16.0 if self.threshold is None else self.threshold, True)

    def foreground(self, image: np.ndarray) -> np.ndarray:
        """Update the background model with ``image`` (H, W, 3) uint8 and return its foreground
        mask (h, w) uint8 0/1 at ``mask_scale`` times the frame's size, cleaned by the
        opening / closing (all 0 above ``max_foreground``)."""
        cv2 = _cv2()
        if self._model is None:
            self._model = self._new_model()
        small = image
        if self.mask_scale != 1:
            small = cv2.resize(image, None, fx=self.mask_scale, fy=self.mask_scale,
                               interpolation=cv2.INTER_AREA)
        mask = (self._model.apply(small) > self.shadow_value).astype(np.uint8)
        if mask.mean() > self.max_foreground:
            return np.zeros_like(mask)
        if self.open_size:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (self.open_size,) * 2)
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
        if self.close_size:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, tuple(self.close_size))
            mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
        return mask

    def blobs(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Connected blobs of a foreground mask from :meth:`foreground`: boxes (N, 4) float32
        xyxy in frame pixels and their fill (N,) (foreground share of the box)."""
        cv2 = _cv2()
        _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        stats = stats[1:].astype(np.float32)
        fill = stats[:, 4] / np.maximum(stats[:, 2] * stats[:, 3], 1)
        xywh = stats[:, :4] / self.mask_scale
        boxes = np.column_stack([xywh[:, 0], xywh[:, 1], xywh[:, 0] + xywh[:, 2],
                                 xywh[:, 1] + xywh[:, 3]]).astype(np.float32)
        return boxes.reshape(-1, 4), fill.astype(np.float32)

    def people(self, mask: np.ndarray) -> Detections:
        """Person boxes from a foreground mask: blobs of a person's size and shape, wide blobs
        split into columns, then the height and region filters."""
        boxes, fill = self.blobs(mask)
        out_boxes, out_scores = [], []
        for box, share in zip(boxes, fill):
            width, height = box[2] - box[0], box[3] - box[1]
            if height < self.min_height or share < self.min_fill:
                continue
            ratio = width / height
            parts = 1
            if ratio > self.aspect[1]:
                parts = max(2, int(round(ratio / self.split_aspect)))
            elif ratio < self.aspect[0]:
                continue
            for j in range(parts):
                out_boxes.append([box[0] + j * width / parts, box[1],
                                  box[0] + (j + 1) * width / parts, box[3]])
                out_scores.append(float(share))
        result = Detections(np.asarray(out_boxes, np.float32).reshape(-1, 4),
                            np.clip(np.asarray(out_scores, np.float32), 0, 1))
        keep = height_ok(result.boxes, self.min_height, self.max_height)
        return result.subset(keep & in_roi(result.boxes, self.roi))

    def detect(self, frame: Frame) -> Detections:
        """Person boxes (xyxy, frame pixels) of one frame; updates the background model."""
        return self.people(self.foreground(frame.image))
