"""OpenCV's HOG people detector (Dalal & Triggs, CVPR 2005) made to work at the sizes people
have in surveillance footage, focused by a static camera's motion.

The default 64 x 128 window holds a person about 82 px tall, so people 35-65 px tall (PETS09 at
480 x 360) are found only on an enlarged image; enlarging the whole frame twice costs about 2 s
a frame on two cores. With ``motion`` (the default), the background model of a
:class:`~attreid.footage.detect_motion.MotionDetector` says where something moves: HOG runs
only on small patches around the moving blobs, each enlarged so that its blob becomes about
``patch_height`` pixels tall, hits without foreground are dropped, and moving person-shaped
blobs HOG did not confirm are kept as lower-scored people.

Numbers in the docstrings were measured on PETS09-S2L1 (vtest.mp4, 480 x 360, frames 1-400,
IoU 0.5, 2 cores shared with other work; docs/results/footage_detection.md).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from attreid.footage.detect_boxes import (HOG_BODY, body_fit, foreground_fraction, height_ok,
                                          in_roi, nms, parse_roi, squash)
from attreid.footage.detect_motion import MotionDetector
from attreid.footage.detections import Detections, FootageError, box_iou
from attreid.footage.sources import Frame, _cv2

HOG_WINDOW = (64, 128)


class HogDetector:
    """People from OpenCV's default HOG people detector; scores ``m / (1 + m)`` of the SVM
    margin ``m`` (motion-only people: half their blob's fill).

    Args:
        motion: the motion model that focuses HOG (default: a new
            :class:`~attreid.footage.detect_motion.MotionDetector`).
        use_motion: ``False``: HOG on the whole frame enlarged by ``upscale`` (x2: about 0.5
            frames/s on two cores and recall 0.70 / precision 0.87 with OpenCV's grouping).
        upscale: enlargement of the whole frame when ``motion`` is ``None`` (2.0 puts PETS's
            48 px people at the window's 82 px: recall 0.70-0.80; 1.5 finds only those over
            ~55 px: recall 0.30).
        patch_height: with motion, each moving blob's patch is enlarged so the blob becomes
            this tall (pixels; the window's person is ~82 px). 115 with ``scale_step`` 1.1:
            recall 0.837 / precision 0.884 at 18.7 frames/s of one core; 102 with 1.05: 0.852 /
            0.881 at 12.4 (the accurate setting).
        max_upscale: largest enlargement of a patch (3: people down to ~30 px).
        patch_pad: each patch extends its blob by this many blob heights above and below
            (and 0.3 to each side): 0.5 lets the search's scales reach people 1.3 times the
            blob's height.
        min_blob_height: moving blobs shorter than this (frame pixels) get no patch.
        body: the person's place in the HOG window, fractions ``(left, top, right, bottom)``
            (:data:`~attreid.footage.detect_boxes.HOG_BODY`).
        hit_threshold: OpenCV's ``hitThreshold`` (SVM margin for a window to count at all).
        score_threshold: smallest SVM margin kept after the search (0.3: precision +5 points
            for recall -2 against 0).
        scale_step: ratio between the search's image scales (1.1: about half the time of
            OpenCV's default 1.05 for 2 points of recall at the same ``patch_height``).
        win_stride: window step in pixels of the enlarged image (8, the cell size).
        padding: pixels OpenCV pads the searched image with.
        group_threshold: 0 uses this module's NMS with box voting; above 0, OpenCV's own
            grouping with that many neighbours (fewer, better-placed boxes: recall -9 points).
        nms_iou: hits overlapping a better one by more than this are dropped (0.3: precision
            +4 points against 0.4, the same recall; people in PETS groups rarely overlap more).
        vote_iou: each kept hit becomes the score-weighted mean of the hits overlapping it by
            more than this (``None``: off; 0.5 gave +1 point precision at 0.3).
        min_foreground: with motion, hits whose box holds less foreground than this share are
            dropped (they are static background that looks like a person).
        add_motion: with motion, keep moving blobs of a person's shape (the motion model's
            filters) that no HOG hit overlaps by ``add_motion_iou`` or more (off: +1.6 points
            recall for -4 points precision on PETS; on for drawn people HOG cannot see).
        add_motion_iou: see ``add_motion``.
        min_height, max_height: person height limits, frame pixels (``max_height`` ``None``: no
            limit).
        roi: keep people whose foot point lies in this rectangle ``(x1, y1, x2, y2)`` or polygon
            ``[(x, y), ...]``, frame pixels.

    Raises:
        FootageError: a bad size, threshold or region.
    """

    def __init__(self, motion: MotionDetector | None = None, *, use_motion: bool = True,
                 upscale: float = 2.0, patch_height: float = 115.0, max_upscale: float = 3.0,
                 patch_pad: float = 0.5, min_blob_height: float = 16.0,
                 body: Sequence[float] = HOG_BODY,
                 hit_threshold: float = 0.0, score_threshold: float = 0.3,
                 scale_step: float = 1.1, win_stride: int = 8, padding: int = 0,
                 group_threshold: int = 0, nms_iou: float = 0.3, vote_iou: float | None = 0.5,
                 min_foreground: float = 0.15, add_motion: bool = False,
                 add_motion_iou: float = 0.3, min_height: float = 28.0,
                 max_height: float | None = None,
                 roi: Sequence[float] | Sequence[Sequence[float]] | None = None) -> None:
        if upscale <= 0 or patch_height <= 0 or max_upscale <= 0 or scale_step <= 1:
            raise FootageError("HOG detector: upscale, patch_height and max_upscale must be "
                               f"positive and scale_step above 1; got {upscale}, {patch_height}, "
                               f"{max_upscale}, {scale_step}")
        if win_stride < 1 or not 0 < nms_iou <= 1 or len(body) != 4:
            raise FootageError(f"HOG detector: win_stride {win_stride} must be at least 1, "
                               f"nms_iou {nms_iou} in (0, 1], body four fractions ({body})")
        self.motion = (motion or MotionDetector()) if use_motion else None
        self.upscale, self.patch_height, self.max_upscale = upscale, patch_height, max_upscale
        self.patch_pad = patch_pad
        self.min_blob_height, self.body = min_blob_height, tuple(float(v) for v in body)
        self.hit_threshold, self.score_threshold = hit_threshold, score_threshold
        self.scale_step, self.win_stride, self.padding = scale_step, win_stride, padding
        self.group_threshold, self.nms_iou, self.vote_iou = group_threshold, nms_iou, vote_iou
        self.min_foreground, self.add_motion = min_foreground, add_motion
        self.add_motion_iou = add_motion_iou
        self.min_height, self.max_height = min_height, max_height
        self.roi = parse_roi(roi)
        self._hog: Any = None

    def reset(self) -> None:
        """Forget the background model (call between sources)."""
        if self.motion is not None:
            self.motion.reset()

    def _descriptor(self) -> Any:
        if self._hog is None:
            cv2 = _cv2()
            if not hasattr(cv2, "HOGDescriptor"):
                raise FootageError("this OpenCV has no HOGDescriptor (5.x moved it to contrib); "
                                   "install opencv-python-headless 4.x")
            self._hog = cv2.HOGDescriptor()
            self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        return self._hog

    def _search(self, image: np.ndarray, scale: float, x0: float = 0.0,
                y0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """HOG windows in ``image`` enlarged by ``scale``: (N, 4) xyxy in the coordinates of
        ``image`` shifted by ``(x0, y0)``, and (N,) SVM margins."""
        cv2 = _cv2()
        if scale != 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
        if image.shape[0] < HOG_WINDOW[1] or image.shape[1] < HOG_WINDOW[0]:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.float32)
        rects, margins = self._descriptor().detectMultiScale(
            image, hitThreshold=self.hit_threshold, winStride=(self.win_stride,) * 2,
            padding=(self.padding,) * 2, scale=self.scale_step,
            groupThreshold=self.group_threshold)
        boxes = np.asarray(rects, np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes = boxes / scale + np.array([x0, y0, x0, y0], np.float32)
        return boxes, np.asarray(margins, np.float32).reshape(-1)

    def patches(self, blobs: np.ndarray, width: int, height: int) -> list[tuple[int, int, int,
                                                                                    int, float]]:
        """Where to run HOG: one ``(x1, y1, x2, y2, scale)`` patch per moving blob (N, 4) of at
        least ``min_blob_height``, padded by ``patch_pad`` blob heights (and to hold at least one
        window), overlapping patches merged (the larger enlargement kept)."""
        rects: list[list[float]] = []
        for x1, y1, x2, y2 in np.asarray(blobs, np.float32).reshape(-1, 4):
            h = y2 - y1
            if h < self.min_blob_height:
                continue
            scale = float(np.clip(self.patch_height / h, 1.0, self.max_upscale))
            half_w = max(x2 - x1 + 0.6 * h, (HOG_WINDOW[0] + 2) / scale) / 2
            half_h = max((1 + 2 * self.patch_pad) * h, (HOG_WINDOW[1] + 2) / scale) / 2
            cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
            rects.append([max(0.0, cx - half_w), max(0.0, cy - half_h), min(width, cx + half_w),
                          min(height, cy + half_h), scale])
        merged = _merge_overlapping(rects)
        return [(int(r[0]), int(r[1]), int(np.ceil(r[2])), int(np.ceil(r[3])), r[4])
                for r in merged]

    def detect(self, frame: Frame) -> Detections:
        """People in one frame: boxes xyxy in frame pixels, scores in [0, 1]."""
        image = frame.image
        if self.motion is None:
            boxes, margins = self._search(image, self.upscale)
            mask = None
        else:
            mask = self.motion.foreground(image)
            blobs, _ = self.motion.blobs(mask)
            found = [self._search(image[y1:y2, x1:x2], s, x1, y1)
                     for x1, y1, x2, y2, s in self.patches(blobs, *frame.size)]
            boxes = np.concatenate([f[0] for f in found]) if found else np.zeros((0, 4))
            margins = np.concatenate([f[1] for f in found]) if found else np.zeros(0)
        boxes = body_fit(boxes, self.body)
        keep = margins >= self.score_threshold
        boxes, margins = boxes[keep], margins[keep]
        if self.group_threshold == 0:
            boxes, margins = nms(boxes, margins, self.nms_iou, self.vote_iou)
        people = Detections(boxes, squash(margins))
        if mask is not None:
            people = self._with_motion(people, mask, self.motion)
        keep = height_ok(people.boxes, self.min_height, self.max_height)
        return people.subset(keep & in_roi(people.boxes, self.roi))

    def _with_motion(self, people: Detections, mask: np.ndarray,
                     motion: MotionDetector) -> Detections:
        """Drop HOG hits without foreground; add moving person-shaped blobs no hit covers."""
        if self.min_foreground > 0 and len(people):
            share = foreground_fraction(mask, people.boxes, motion.mask_scale)
            people = people.subset(share >= self.min_foreground)
        if not self.add_motion:
            return people
        moving = motion.people(mask)
        if len(people) and len(moving):
            moving = moving.subset(box_iou(moving.boxes, people.boxes).max(1)
                                   < self.add_motion_iou)
        moving.scores = moving.scores * 0.5
        return Detections.concat([people, moving])


def _merge_overlapping(rects: list[list[float]]) -> list[list[float]]:
    """Union rectangles ``[x1, y1, x2, y2, scale]`` until none overlap (largest scale kept)."""
    rects = [list(r) for r in rects]
    merged = True
    while merged:
        merged = False
        for i in range(len(rects)):
            for j in range(i + 1, len(rects)):
                a, b = rects[i], rects[j]
                if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                    rects[i] = [min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]),
                                max(a[3], b[3]), max(a[4], b[4])]
                    del rects[j]
                    merged = True
                    break
            if merged:
                break
    return rects
