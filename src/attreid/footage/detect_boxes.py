"""Box arithmetic shared by the detectors: non-maximum suppression (with box voting), the HOG
window's body fit, the region of interest, score squashing.

Everything here is plain numpy on ``(N, 4)`` xyxy boxes in frame pixels.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from attreid.footage.detections import FootageError, box_iou

HOG_BODY = (0.26, 0.16, 0.74, 0.84)
"""Where the person sits in OpenCV's default 64 x 128 HOG people window, as fractions
``(left, top, right, bottom)`` of the window: measured on PETS09-S2L1 (793 HOG hits matched to
ground truth, median offsets 0.29, 0.20, 0.70, 0.82) and widened to the values that gave the
best recall / precision there (0.26, 0.16, 0.74, 0.84: +1 point recall, +1.5 precision over the
medians, docs/results/footage_detection.md). The raw window is about twice the person's width
and 1.5 times their height: its boxes match almost nothing at IoU 0.5."""


def body_fit(boxes: np.ndarray, fit: Sequence[float] = HOG_BODY) -> np.ndarray:
    """Shrink detector windows (N, 4) xyxy to the body inside them: ``fit`` = ``(left, top,
    right, bottom)`` as fractions of the window's width and height."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.stack([boxes[:, 0] + fit[0] * w, boxes[:, 1] + fit[1] * h,
                     boxes[:, 0] + fit[2] * w, boxes[:, 1] + fit[3] * h], 1).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = 0.3,
        vote_iou: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Greedy non-maximum suppression, best score first; a kept box suppresses the others that
    overlap it by more than ``iou``.

    With ``vote_iou``, each kept box becomes the score-weighted mean of the boxes overlapping it
    by more than ``vote_iou`` (itself included; weights ``max(score, 0) + 0.05``): box voting,
    which averages the stride-quantised windows of one person into a better-placed box.

    Returns:
        ``(boxes (K, 4) float32, scores (K,) float32)``, best score first.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if not len(boxes):
        return boxes, scores
    overlap = box_iou(boxes, boxes)
    suppressed = np.zeros(len(boxes), bool)
    kept_boxes, kept_scores = [], []
    for i in np.argsort(-scores, kind="stable"):
        if suppressed[i]:
            continue
        box = boxes[i]
        if vote_iou is not None:
            group = overlap[i] > vote_iou
            group[i] = True
            weights = np.maximum(scores[group], 0) + 0.05
            box = (boxes[group] * weights[:, None]).sum(0) / weights.sum()
        kept_boxes.append(box)
        kept_scores.append(scores[i])
        suppressed |= overlap[i] > iou
        suppressed[i] = True
    return np.asarray(kept_boxes, np.float32), np.asarray(kept_scores, np.float32)


def squash(margin: np.ndarray) -> np.ndarray:
    """An SVM margin (any real) to [0, 1): ``m / (1 + m)`` for ``m > 0``, else 0 (HOG's margin 0
    is its decision boundary; 1 gives 0.5)."""
    m = np.maximum(np.asarray(margin, np.float32), 0)
    return (m / (1 + m)).astype(np.float32)


def parse_roi(roi: Sequence[float] | Sequence[Sequence[float]] | None) -> np.ndarray | None:
    """A region of interest as a polygon (P, 2) float64: ``None``; a rectangle ``(x1, y1, x2,
    y2)``; or three or more ``(x, y)`` points, all in frame pixels.

    Raises:
        FootageError: anything else (the message shows the value).
    """
    if roi is None:
        return None
    try:
        points = np.asarray(roi, np.float64)
    except (TypeError, ValueError):
        points = np.zeros(0)
    if points.shape == (4,) and points[2] > points[0] and points[3] > points[1]:
        x1, y1, x2, y2 = points
        return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]])
    if points.ndim == 2 and points.shape[1] == 2 and len(points) >= 3 and np.isfinite(points).all():
        return points
    raise FootageError(f"region of interest {roi!r}: expected a rectangle (x1, y1, x2, y2) with "
                       "x2 > x1 and y2 > y1, or a polygon of three or more (x, y) points, in "
                       "frame pixels")


def in_roi(boxes: np.ndarray, polygon: np.ndarray | None) -> np.ndarray:
    """(N,) bool: whether each box's foot point (bottom centre) lies inside ``polygon`` (P, 2)
    (even-odd rule); all True without a polygon."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if polygon is None:
        return np.ones(len(boxes), bool)
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    y = boxes[:, 3]
    inside = np.zeros(len(boxes), bool)
    xa, ya = polygon[:, 0], polygon[:, 1]
    xb, yb = np.roll(xa, -1), np.roll(ya, -1)
    for x1, y1, x2, y2 in zip(xa, ya, xb, yb):
        crosses = (y1 > y) != (y2 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (x < at)
    return inside


def foreground_fraction(mask: np.ndarray, boxes: np.ndarray, scale: float) -> np.ndarray:
    """(N,) share of foreground pixels of ``mask`` (h, w) uint8 0/1, made at ``scale`` times the
    frame's size, inside each frame-pixel box (N, 4)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if not len(boxes):
        return np.zeros(0)
    h, w = mask.shape[:2]
    integral = np.zeros((h + 1, w + 1), np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    b = np.round(boxes * scale).astype(int)
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    total = (integral[b[:, 3], b[:, 2]] - integral[b[:, 1], b[:, 2]]
             - integral[b[:, 3], b[:, 0]] + integral[b[:, 1], b[:, 0]])
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.divide(total, area, out=np.zeros(len(b)), where=area > 0)


def height_ok(boxes: np.ndarray, min_height: float, max_height: float | None) -> np.ndarray:
    """(N,) bool: box height within ``[min_height, max_height]`` pixels."""
    h = np.asarray(boxes, np.float32).reshape(-1, 4)
    h = h[:, 3] - h[:, 1]
    return (h >= min_height) & (h <= (np.inf if max_height is None else max_height))
