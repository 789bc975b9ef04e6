"""The value passed between the stages of footage processing: the detections of one frame.

Boxes are ``xyxy`` in pixels of the frame as decoded (float32), scores in [0, 1] (a detector's
own confidence, squashed where it has no natural scale), track ids ``-1`` until a tracker gives
them. MOTChallenge text (1-based frames, ``left, top, width, height``) is converted at the edges
(:mod:`attreid.footage.mot`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from attreid.errors import AttreidError


class FootageError(AttreidError, ValueError):
    """Footage that cannot be read or processed: an unreadable video, a bad manifest row, a
    detector whose outputs do not fit; the message names the file and what to do."""


def _empty_boxes() -> np.ndarray:
    return np.zeros((0, 4), np.float32)


@dataclass
class Detections:
    """People found in one frame.

    Attributes:
        boxes: (N, 4) float32 ``x1, y1, x2, y2`` in frame pixels (x2 > x1, y2 > y1).
        scores: (N,) float32 detector confidence in [0, 1].
        track_ids: (N,) int64, ``-1`` where no tracker has assigned one.
        embeddings: (N, D) float32 appearance embeddings where computed, else ``None``.
    """

    boxes: np.ndarray = field(default_factory=_empty_boxes)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    embeddings: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        n = len(self.boxes)
        self.scores = np.asarray(self.scores, np.float32).reshape(-1)
        if len(self.track_ids) == 0 and n:
            self.track_ids = np.full(n, -1, np.int64)
        self.track_ids = np.asarray(self.track_ids, np.int64).reshape(-1)
        if len(self.scores) != n or len(self.track_ids) != n:
            raise FootageError(f"detections: {n} boxes but {len(self.scores)} scores and "
                               f"{len(self.track_ids)} track ids")
        if self.embeddings is not None and len(self.embeddings) != n:
            raise FootageError(f"detections: {n} boxes but {len(self.embeddings)} embeddings")

    def __len__(self) -> int:
        return len(self.boxes)

    def subset(self, keep: np.ndarray) -> "Detections":
        """The detections selected by a boolean mask or an index array."""
        return Detections(self.boxes[keep], self.scores[keep], self.track_ids[keep],
                          None if self.embeddings is None else self.embeddings[keep])

    @property
    def heights(self) -> np.ndarray:
        """(N,) box heights in pixels."""
        return self.boxes[:, 3] - self.boxes[:, 1]

    @staticmethod
    def concat(parts: list["Detections"]) -> "Detections":
        """One set from several (embeddings kept only when every part has them)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return Detections()
        embeddings = None
        if all(p.embeddings is not None for p in parts):
            embeddings = np.concatenate([p.embeddings for p in parts])
        return Detections(np.concatenate([p.boxes for p in parts]),
                          np.concatenate([p.scores for p in parts]),
                          np.concatenate([p.track_ids for p in parts]), embeddings)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box of ``a`` (N, 4) with every box of ``b`` (M, 4),
    both xyxy; returns (N, M) float64 (0 where a box has no area)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(axis=1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes (N, 4) xyxy clipped to a ``width`` x ``height`` frame."""
    out = np.asarray(boxes, np.float32).copy().reshape(-1, 4)
    out[:, [0, 2]] = out[:, [0, 2]].clip(0, width)
    out[:, [1, 3]] = out[:, [1, 3]].clip(0, height)
    return out


def cut_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The pixels (h, w, 3) of ``image`` inside ``box`` (xyxy, rounded, clipped to the frame; a
    view, empty when the box lies outside)."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return image[max(y1, 0):max(y2, 0), max(x1, 0):max(x2, 0)]
