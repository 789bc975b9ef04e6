"""A constant-velocity Kalman filter of a box, as SORT, DeepSORT and ByteTrack use it.

State ``(cx, cy, a, h, vcx, vcy, va, vh)``: centre, aspect ratio ``w / h``, height and their
velocities per frame; the measurement is ``(cx, cy, a, h)``. Noise scales with the box height
(DeepSORT's weights: 1/20 of the height for position, 1/160 for velocity; Wojke et al., "Simple
Online and Realtime Tracking with a Deep Association Metric", ICIP 2017).
"""

from __future__ import annotations

import numpy as np

POSITION_WEIGHT = 1.0 / 20
VELOCITY_WEIGHT = 1.0 / 160
_F = np.eye(8)
_F[:4, 4:] = np.eye(4)
_H = np.eye(4, 8)


def xyxy_to_xyah(box: np.ndarray) -> np.ndarray:
    """(4,) ``x1, y1, x2, y2`` -> ``cx, cy, w / h, h``."""
    w, h = box[2] - box[0], max(box[3] - box[1], 1e-6)
    return np.array([box[0] + w / 2, box[1] + h / 2, w / h, h], np.float64)


def xyah_to_xyxy(state: np.ndarray) -> np.ndarray:
    """``cx, cy, a, h`` (the first four entries of ``state``) -> (4,) ``x1, y1, x2, y2``."""
    cx, cy, a, h = state[:4]
    w = a * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], np.float64)


class BoxKalman:
    """The filter of one track: :meth:`predict` once a frame, :meth:`update` with its box."""

    def __init__(self, box: np.ndarray) -> None:
        z = xyxy_to_xyah(np.asarray(box, np.float64))
        self.mean = np.concatenate([z, np.zeros(4)])
        h = z[3]
        std = [2 * POSITION_WEIGHT * h, 2 * POSITION_WEIGHT * h, 1e-2, 2 * POSITION_WEIGHT * h,
               10 * VELOCITY_WEIGHT * h, 10 * VELOCITY_WEIGHT * h, 1e-5, 10 * VELOCITY_WEIGHT * h]
        self.covariance = np.diag(np.square(std))

    def predict(self) -> None:
        h = self.mean[3]
        std = [POSITION_WEIGHT * h, POSITION_WEIGHT * h, 1e-2, POSITION_WEIGHT * h,
               VELOCITY_WEIGHT * h, VELOCITY_WEIGHT * h, 1e-5, VELOCITY_WEIGHT * h]
        self.mean = _F @ self.mean
        self.covariance = _F @ self.covariance @ _F.T + np.diag(np.square(std))
        self.mean[3] = max(self.mean[3], 1.0)

    def update(self, box: np.ndarray) -> None:
        z = xyxy_to_xyah(np.asarray(box, np.float64))
        h = self.mean[3]
        r = np.diag(np.square([POSITION_WEIGHT * h, POSITION_WEIGHT * h, 1e-1,
                               POSITION_WEIGHT * h]))
        s = _H @ self.covariance @ _H.T + r
        gain = np.linalg.solve(s, _H @ self.covariance).T  # (8, 4)
        self.mean = self.mean + gain @ (z - _H @ self.mean)
        self.covariance = self.covariance - gain @ s @ gain.T

    @property
    def box(self) -> np.ndarray:
        """(4,) the current estimate, xyxy."""
        return xyah_to_xyxy(self.mean)
