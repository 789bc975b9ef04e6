"""Detectors (attreid.footage.detect*): box arithmetic against hand-computed values, the motion
detector on synthetic walking people, det.txt round trip, ONNX layouts with tiny models built
here, the registry; one realdata test on PETS09-S2L1 (skipped when ../shared/data is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import require

cv2 = require("cv2", "footage detectors (the footage extra)")

from attreid.footage.detect import DETECTORS, MotFileDetector, build_detector  # noqa: E402
from attreid.footage.detect_boxes import (body_fit, foreground_fraction, in_roi,  # noqa: E402
                                          nms, parse_roi, squash)
from attreid.footage.detect_hog import HogDetector  # noqa: E402
from attreid.footage.detect_motion import MotionDetector  # noqa: E402
from attreid.footage.detect_onnx import OnnxDetector, decode  # noqa: E402
from attreid.footage.detections import Detections, FootageError, box_iou  # noqa: E402
from attreid.footage.mot import detection_scores, read_mot, write_mot  # noqa: E402
from attreid.footage.sources import Frame  # noqa: E402

PETS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "footage" / "pets09-s2l1"


def _frame(image: np.ndarray, index: int = 0) -> Frame:
    return Frame("cam", index, index / 10.0, image, "synthetic")


# ---- box arithmetic ----------------------------------------------------------------------------

def test_body_fit_shrinks_the_window_by_hand():
    window = np.array([[10, 20, 74, 148]], np.float32)  # 64 x 128
    fitted = body_fit(window, (0.25, 0.125, 0.75, 0.875))
    np.testing.assert_allclose(fitted, [[26, 36, 58, 132]])


def test_nms_keeps_the_best_and_drops_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], np.float32)
    kept, scores = nms(boxes, np.array([0.5, 0.9, 0.7]), iou=0.5)
    # IoU of the first two: 90 / 110 = 0.82 > 0.5: the 0.9 one wins
    np.testing.assert_allclose(kept, [[1, 0, 11, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(scores, [0.9, 0.7])


def test_nms_box_voting_is_the_weighted_mean():
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10]], np.float32)  # IoU 80/120 = 0.67
    kept, scores = nms(boxes, np.array([1.0, 0.5]), iou=0.3, vote_iou=0.5)
    w1, w2 = 1.05, 0.55
    np.testing.assert_allclose(kept, [[2 * w2 / (w1 + w2), 0, 10 + 2 * w2 / (w1 + w2), 10]],
                               rtol=1e-5)
    np.testing.assert_allclose(scores, [1.0])


def test_squash_and_roi():
    np.testing.assert_allclose(squash(np.array([-2.0, 0.0, 1.0, 3.0])), [0, 0, 0.5, 0.75])
    boxes = np.array([[0, 0, 10, 50], [100, 0, 110, 50]], np.float32)  # feet (5, 50), (105, 50)
    assert in_roi(boxes, parse_roi((0, 0, 60, 60))).tolist() == [True, False]
    triangle = parse_roi([(0, 0), (200, 60), (0, 60)])  # below the diagonal y = 0.3 x
    assert in_roi(boxes, triangle).tolist() == [True, True]  # 50 > 0.3 * 105
    raised = boxes - np.array([0, 30, 0, 30], np.float32)  # feet (5, 20), (105, 20)
    assert in_roi(raised, triangle).tolist() == [True, False]
    assert in_roi(boxes, None).tolist() == [True, True]
    with pytest.raises(FootageError, match="rectangle"):
        parse_roi((10, 10, 5, 5))


def test_foreground_fraction_on_a_half_size_mask():
    mask = np.zeros((50, 50), np.uint8)
    mask[10:20, 10:15] = 1  # frame pixels (20..40, 20..30) at mask_scale 0.5
    share = foreground_fraction(mask, np.array([[20, 20, 30, 40], [20, 20, 40, 40]]), 0.5)
    np.testing.assert_allclose(share, [1.0, 0.5])


# ---- motion on synthetic footage ---------------------------------------------------------------

def _walkers(frames: int = 40, size=(320, 240), seed: int = 0):
    """A static textured background with three dark upright people (ellipse body + head)
    walking across; returns the frames and the true boxes per frame (xyxy)."""
    rng = np.random.default_rng(seed)
    width, height = size
    background = cv2.GaussianBlur(rng.integers(90, 200, (height, width, 3), np.uint8), (7, 7), 0)
    people = [((20, 60), (4, 0), (16, 52)), ((290, 150), (-3, 0), (20, 64)),
              ((120, 20), (1, 3), (14, 44))]  # start (x, y top-left), step per frame, (w, h)
    images, truth = [], []
    for t in range(frames):
        image = background.copy()
        boxes = []
        for (x0, y0), (dx, dy), (w, h) in people:
            x, y = x0 + dx * t, y0 + dy * t
            cv2.ellipse(image, (x + w // 2, y + h // 2 + h // 10), (w // 2, h * 4 // 10), 0, 0,
                        360, (30, 25, 40), -1)
            cv2.circle(image, (x + w // 2, y + h // 10), h // 10, (40, 40, 60), -1)
            boxes.append([x, y, x + w, y + h])
        images.append(image)
        truth.append(np.array(boxes, np.float32))
    return images, truth


def test_motion_detector_finds_walking_people():
    images, truth = _walkers()
    detector = MotionDetector(mask_scale=1.0, min_height=20)
    found = {t + 1: detector.detect(_frame(im, t)) for t, im in enumerate(images)}
    # the first frame is learnt with its people in it: their ghosts fade within ~15 frames
    gt = {t + 1: Detections(b, np.ones(len(b))) for t, b in enumerate(truth) if t >= 15}
    scores = detection_scores(gt, found, iou=0.5)
    assert scores.recall >= 0.9 and scores.precision >= 0.9, scores
    assert all(((d.scores >= 0) & (d.scores <= 1)).all() for d in found.values())


def test_motion_reset_forgets_the_background():
    images, _ = _walkers(frames=8)
    detector = MotionDetector(mask_scale=1.0, min_height=20)
    for t, im in enumerate(images):
        detector.detect(_frame(im, t))
    detector.reset()
    assert detector._model is None
    mask = detector.foreground(images[0])  # a new model: its first frame is all background
    assert mask.shape == images[0].shape[:2] and mask.sum() == 0


def test_motion_splits_a_blob_of_two_side_by_side_people():
    detector = MotionDetector(mask_scale=1.0, min_height=20)
    mask = np.zeros((100, 100), np.uint8)
    mask[20:70, 6:50] = 1  # 44 x 50: aspect 0.88 > 0.8 -> round(0.88 / 0.42) = 2 of 22 x 50
    mask[20:70, 60:80] = 1  # one of 20 x 50 (aspect 0.4)
    people = detector.people(mask)
    expected = np.array([[6, 20, 28, 70], [28, 20, 50, 70], [60, 20, 80, 70]], np.float32)
    order = np.argsort(people.boxes[:, 0])
    np.testing.assert_allclose(people.boxes[order], expected)


def test_hog_with_motion_keeps_moving_people_on_synthetic_footage():
    images, truth = _walkers()
    detector = HogDetector(MotionDetector(mask_scale=1.0, min_height=20), min_height=20,
                           add_motion=True)
    found = {t + 1: detector.detect(_frame(im, t)) for t, im in enumerate(images)}
    # the first frame is learnt with its people in it: their ghosts fade within ~15 frames
    gt = {t + 1: Detections(b, np.ones(len(b))) for t, b in enumerate(truth) if t >= 15}
    scores = detection_scores(gt, found, iou=0.5)
    # HOG may not fire on drawn people; the motion blobs it does not cover are kept
    assert scores.recall >= 0.9 and scores.precision >= 0.8, scores


def test_hog_patches_cover_each_blob_and_merge_overlaps():
    detector = HogDetector()
    patches = detector.patches(np.array([[100, 100, 120, 151], [110, 110, 130, 161],
                                         [300, 20, 310, 30]]), 480, 360)
    assert len(patches) == 1  # the two blobs overlap; the 10 px one is below min_blob_height
    x1, y1, x2, y2, scale = patches[0]
    assert x1 <= 100 and y1 <= 100 and x2 >= 130 and y2 >= 161
    assert scale == pytest.approx(115 / 51)


# ---- MOTChallenge det.txt ----------------------------------------------------------------------

def test_mot_file_detector_round_trip(tmp_path):
    frames = [(1, Detections([[10, 20, 30, 80]], [0.9])),
              (3, Detections([[5, 5, 15, 45], [50, 60, 70, 100]], [0.4, 0.8]))]
    path = tmp_path / "det.txt"
    write_mot(path, frames)
    detector = MotFileDetector(path, scale=0.5)
    first = detector.detect(_frame(np.zeros((8, 8, 3), np.uint8), 0))
    np.testing.assert_allclose(first.boxes, [[5, 10, 15, 40]])
    assert first.track_ids.tolist() == [-1]
    assert len(detector.detect(_frame(np.zeros((8, 8, 3), np.uint8), 1))) == 0
    third = MotFileDetector(path, frame_offset=2, min_score=0.5).detect(
        _frame(np.zeros((8, 8, 3), np.uint8), 0))
    np.testing.assert_allclose(third.boxes, [[50, 60, 70, 100]])
    np.testing.assert_allclose(third.scores, [0.8])


# ---- ONNX layouts ------------------------------------------------------------------------------

def _constant_model(path: Path, value: np.ndarray, size=(64, 64)) -> Path:
    """An ONNX graph taking (1, 3, h, w) and returning a constant tensor."""
    onnx = require("onnx", "ONNX detectors (the onnx extra)")
    require("onnxruntime", "ONNX detectors (the onnx extra)")
    from onnx import TensorProto, helper, numpy_helper

    node = helper.make_node("Constant", [], ["output"],
                            value=numpy_helper.from_array(value.astype(np.float32)))
    graph = helper.make_graph(
        [node], "constant",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size[1], size[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, list(value.shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnx_yolov8_layout_with_letterbox(tmp_path):
    # (1, 4 + 2 classes, 3 candidates): a person at centre (32, 32) 10 x 20, a car, a weak person
    out = np.zeros((1, 6, 3), np.float32)
    out[0, :, 0] = [32, 32, 10, 20, 0.9, 0.1]
    out[0, :, 1] = [10, 10, 8, 8, 0.05, 0.95]
    out[0, :, 2] = [50, 40, 6, 12, 0.1, 0.0]
    detector = OnnxDetector(_constant_model(tmp_path / "v8.onnx", out), input_size=(64, 64),
                            layout="yolov8", score_threshold=0.25)
    # a 128 x 64 frame: letterbox scale 0.5, padding 16 px top and bottom
    found = detector.detect(_frame(np.zeros((64, 128, 3), np.uint8)))
    np.testing.assert_allclose(found.boxes, [[54, 12, 74, 52]])
    np.testing.assert_allclose(found.scores, [0.9], rtol=1e-6)


def test_onnx_yolov5_and_boxes_layouts(tmp_path):
    v5 = np.array([[[32, 32, 10, 20, 0.5, 0.8, 0.2], [32, 32, 10, 20, 0.9, 0.1, 0.9]]],
                  np.float32)  # person score 0.4; the second is a car (0.09 person)
    detector = OnnxDetector(_constant_model(tmp_path / "v5.onnx", v5), input_size=(64, 64),
                            layout="yolov5", letterbox=False)
    found = detector.detect(_frame(np.zeros((128, 128, 3), np.uint8)))  # stretched by 0.5
    np.testing.assert_allclose(found.boxes, [[54, 44, 74, 84]])
    np.testing.assert_allclose(found.scores, [0.4], rtol=1e-6)
    table = np.array([[4, 4, 20, 40, 0.7, 0], [4, 4, 20, 40, 0.9, 2]], np.float32)
    detector = OnnxDetector(_constant_model(tmp_path / "b.onnx", table), input_size=(64, 64),
                            layout="boxes", letterbox=False)
    found = detector.detect(_frame(np.zeros((64, 64, 3), np.uint8)))
    np.testing.assert_allclose(found.boxes, [[4, 4, 20, 40]])


def test_onnx_wrong_output_shape_names_file_shape_and_layouts(tmp_path):
    path = _constant_model(tmp_path / "wrong.onnx", np.zeros((2, 5), np.float32))
    detector = OnnxDetector(path, input_size=(64, 64), layout="yolov8")
    with pytest.raises(FootageError) as error:
        detector.detect(_frame(np.zeros((64, 64, 3), np.uint8)))
    message = str(error.value)
    assert "wrong.onnx" in message and "(2, 5)" in message
    assert all(name in message for name in ("'yolov8'", "'yolov5'", "'boxes'"))
    with pytest.raises(FootageError, match="class 3"):
        decode(np.zeros((1, 6, 4)), "yolov8", 3)


def test_onnx_missing_file_and_bad_layout(tmp_path):
    with pytest.raises(FootageError, match="not found"):
        OnnxDetector(tmp_path / "none.onnx")
    with pytest.raises(FootageError, match="yolov8, yolov5, boxes"):
        OnnxDetector(tmp_path / "none.onnx", layout="ssd")


# ---- registry ----------------------------------------------------------------------------------

def test_build_detector_by_name_and_unknown_names(tmp_path):
    assert set(DETECTORS) == {"hog", "motion", "mot", "onnx"}
    assert isinstance(build_detector("motion", mask_scale=1.0), MotionDetector)
    assert isinstance(build_detector("hog", min_height=20), HogDetector)
    with pytest.raises(FootageError, match="hog, motion, mot, onnx"):
        build_detector("yolo")
    with pytest.raises(FootageError, match="bad options"):
        build_detector("motion", colour="red")


# ---- real footage ------------------------------------------------------------------------------

@pytest.mark.realdata
def test_default_detector_on_pets09_frames():
    if not (PETS / "vtest.mp4").is_file():
        pytest.skip("../shared/data/footage/pets09-s2l1 is absent")
    from attreid.footage.sources import SourceSpec, read_frames

    truth = read_mot(PETS / "gt" / "gt.txt", scale=0.625)
    detector = build_detector("hog")
    found = {}
    for frame in read_frames(SourceSpec(PETS / "vtest.mp4", "pets"), last=119):
        people = detector.detect(frame)
        if frame.index % 2 == 1:  # every other frame of 2..120 scored, all feed the model
            found[frame.index + 1] = people
    scores = detection_scores({f: truth[f] for f in found}, found)
    # measured 2026-12-05: recall 0.757 / precision 0.953 on these 60 frames (the background
    # model is still learning in the first ones); floors about 0.05 below
    assert scores.recall >= 0.70 and scores.precision >= 0.90, scores


def test_onnx_input_size_that_the_model_contradicts_is_named(tmp_path):
    """From the replay of issue 27: a 64x64 model with the default 640x640 was a traceback."""
    path = _constant_model(tmp_path / "small.onnx", np.zeros((1, 6, 1), np.float32),
                           size=(96, 64))
    with pytest.raises(FootageError, match=r"small.onnx: the model takes 96x64 images, not "
                                           r"640x640; pass --onnx-size 96x64"):
        OnnxDetector(path)
    assert OnnxDetector(path, input_size=(96, 64)).input_size == (96, 64)
