"""A user's own ONNX detector (a YOLO-family export, or any model with one of the layouts below)
through ONNX Runtime.

Layouts of the first output (``C`` classes, ``N`` candidates):

* ``"yolov8"``: (1, 4 + C, N), rows ``cx, cy, w, h`` then one score per class (YOLOv8 / v11);
* ``"yolov5"``: (1, N, 5 + C), columns ``cx, cy, w, h, objectness`` then class scores
  (score = objectness x class score);
* ``"boxes"``: (N, 6) or (1, N, 6), columns ``x1, y1, x2, y2, score, class`` (an export with
  NMS built in).

Box coordinates are in pixels of the network's input; they are mapped back through the resize
(or the letterbox) to frame pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from attreid.footage.detect_boxes import height_ok, nms
from attreid.footage.detections import Detections, FootageError, clip_boxes
from attreid.footage.sources import Frame, _cv2

LAYOUTS = ("yolov8", "yolov5", "boxes")


class OnnxDetector:
    """People from an ONNX detection model (CPU ONNX Runtime).

    Args:
        path: the ``.onnx`` file.
        input_size: the network's ``(width, height)`` in pixels (640 x 640 for most YOLO
            exports).
        layout: one of :data:`LAYOUTS` (see the module's docstring).
        person_class: the person's class index (0 in COCO).
        score_threshold: smallest person score kept.
        nms_iou: non-maximum suppression threshold (raw YOLO outputs hold many boxes per
            person; ``"boxes"`` exports usually did NMS already and pass through unchanged).
        letterbox: keep the frame's aspect ratio, padding with grey (114) as YOLO's training
            does; ``False`` stretches the frame to ``input_size``.
        rgb: feed RGB (YOLO exports expect it) rather than the decoder's BGR.
        min_height: smallest person kept, frame pixels.

    Raises:
        FootageError: a missing or unreadable file, an unknown layout, or (on the first frame)
            outputs that do not fit the layout; the message names the file, the shape found and
            the layouts accepted.
    """

    def __init__(self, path: Path | str, input_size: tuple[int, int] = (640, 640),
                 layout: str = "yolov8", person_class: int = 0, score_threshold: float = 0.25,
                 nms_iou: float = 0.45, letterbox: bool = True, rgb: bool = True,
                 min_height: float = 0.0) -> None:
        self.path = Path(path)
        if layout not in LAYOUTS:
            raise FootageError(f"ONNX detector layout {layout!r}: choose one of "
                               f"{', '.join(LAYOUTS)}")
        if not self.path.is_file():
            raise FootageError(f"{self.path}: ONNX detector file not found")
        if len(input_size) != 2 or min(input_size) < 1:
            raise FootageError(f"{self.path}: input_size must be (width, height), got "
                               f"{input_size!r}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.layout, self.person_class = layout, int(person_class)
        self.score_threshold, self.nms_iou = score_threshold, nms_iou
        self.letterbox, self.rgb, self.min_height = letterbox, rgb, min_height
        self._session = _open_session(self.path)
        self._input = self._session.get_inputs()[0].name
        _check_input(self.path, self._session.get_inputs()[0].shape, self.input_size)

    def reset(self) -> None:
        """Nothing to forget: each frame is detected on its own."""

    def _prepare(self, image: np.ndarray) -> tuple[np.ndarray, float, float, float, float]:
        """The network's input (1, 3, h, w) float32 in [0, 1] and the mapping back: per-axis
        scales and the padding offsets."""
        cv2 = _cv2()
        width, height = self.input_size
        frame_h, frame_w = image.shape[:2]
        sx, sy = width / frame_w, height / frame_h
        pad_x = pad_y = 0.0
        if self.letterbox:
            sx = sy = min(sx, sy)
            new_w, new_h = round(frame_w * sx), round(frame_h * sy)
            canvas = np.full((height, width, 3), 114, np.uint8)
            pad_x, pad_y = (width - new_w) // 2, (height - new_h) // 2
            canvas[pad_y:pad_y + new_h, pad_x:pad_x + new_w] = cv2.resize(
                image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        else:
            canvas = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        if self.rgb:
            canvas = canvas[:, :, ::-1]
        tensor = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], np.float32) / 255.0
        return tensor, sx, sy, float(pad_x), float(pad_y)

    def detect(self, frame: Frame) -> Detections:
        """People in one frame: boxes xyxy in frame pixels, scores in [0, 1]."""
        tensor, sx, sy, pad_x, pad_y = self._prepare(frame.image)
        try:
            output = np.asarray(self._session.run(None, {self._input: tensor})[0])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise FootageError(f"{self.path}: ONNX Runtime could not run the detector on a "
                               f"{tensor.shape} input ({exc}); check --onnx-size") from None
        boxes, scores = decode(output, self.layout, self.person_class, str(self.path))
        keep = scores >= self.score_threshold
        boxes, scores = boxes[keep], scores[keep]
        if self.layout != "boxes":
            boxes, scores = nms(boxes, scores, self.nms_iou)
        boxes = (boxes - np.array([pad_x, pad_y, pad_x, pad_y], np.float32)) / np.array(
            [sx, sy, sx, sy], np.float32)
        boxes = clip_boxes(boxes, *frame.size)
        found = Detections(boxes, np.clip(scores, 0, 1))
        return found.subset(height_ok(found.boxes, max(self.min_height, 1e-6), None))


def decode(output: np.ndarray, layout: str, person_class: int,
           where: str = "model") -> tuple[np.ndarray, np.ndarray]:
    """Person boxes (N, 4) xyxy in network-input pixels and scores (N,) from a detector's first
    output in ``layout``.

    Raises:
        FootageError: the output's shape does not fit ``layout`` or has no ``person_class``
            (names ``where``, the shape found and the layouts accepted).
    """
    out = np.asarray(output, np.float32)
    shape = tuple(out.shape)
    batch_of_one = out.ndim == 3 and out.shape[0] == 1
    if layout == "yolov8" and batch_of_one and out.shape[1] > 4 + person_class:
        table = out[0].T  # (N, 4 + C)
        xyxy = _from_centre(table[:, :4])
        return xyxy, table[:, 4 + person_class].copy()
    if layout == "yolov5" and batch_of_one and out.shape[2] > 5 + person_class:
        table = out[0]  # (N, 5 + C)
        return _from_centre(table[:, :4]), table[:, 4] * table[:, 5 + person_class]
    if layout == "boxes" and out.ndim in (2, 3) and out.shape[-1] == 6 and (
            out.ndim == 2 or out.shape[0] == 1):
        table = out.reshape(-1, 6)
        person = np.round(table[:, 5]).astype(int) == person_class
        return table[person, :4].copy(), table[person, 4].copy()
    raise FootageError(
        f"{where}: output of shape {shape} does not fit layout {layout!r} with person class "
        f"{person_class}; layouts accepted: 'yolov8' (1, 4+C, N) cx,cy,w,h + class scores; "
        "'yolov5' (1, N, 5+C) cx,cy,w,h, objectness + class scores; 'boxes' (N, 6) or "
        "(1, N, 6) x1,y1,x2,y2,score,class; pass the layout (and person_class) of your "
        "export")


def _from_centre(cxcywh: np.ndarray) -> np.ndarray:
    cx, cy, w, h = cxcywh.T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).astype(np.float32)


def _check_input(path: Path, shape: Any, size: tuple[int, int]) -> None:
    """Refuse an ``input_size`` that the model's declared input (N, 3, H, W) contradicts."""
    if not isinstance(shape, (list, tuple)) or len(shape) != 4:
        raise FootageError(f"{path}: the detector's input is shaped {shape}; expected an "
                           "image batch (N, 3, H, W)")
    height, width = shape[2], shape[3]
    fixed = [(name, d, want) for name, d, want in (("height", height, size[1]),
                                                   ("width", width, size[0]))
             if isinstance(d, int) and d != want]
    if fixed:
        model = f"{width}x{height}"
        raise FootageError(f"{path}: the model takes {model} images, not {size[0]}x{size[1]}; "
                           f"pass --onnx-size {model} (input_size=({width}, {height}))")


def _open_session(path: Path) -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise FootageError("the ONNX detector needs onnxruntime: pip install "
                           "'attreid[onnx]'") from exc
    try:
        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise FootageError(f"{path}: ONNX Runtime cannot load this model ({exc}); is it an "
                           "ONNX file, complete?") from None
