"""The footage stages that need no model: MOTChallenge text, detection scores, the tracker
(motion and appearance), gap interpolation, tracklets (quality, splits) — against hand-computed
values and brute force."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import require

require("motmetrics", "tracking scores (the footage extra)")

from attreid.footage.detections import Detections, FootageError, box_iou  # noqa: E402
from attreid.footage.mot import (  # noqa: E402
    detection_scores,
    hota_scores,
    read_mot,
    tracking_scores,
    write_mot,
)
from attreid.footage.sources import Frame  # noqa: E402
from attreid.footage.track import Tracker, interpolate_gaps  # noqa: E402
from attreid.footage.tracklets import (  # noqa: E402
    TrackletBuilder,
    TrackletSettings,
    crop_quality,
)

FPS = 10.0
IMAGE = np.zeros((240, 320, 3), np.uint8)


def _frame(index: int) -> Frame:
    return Frame("1", index, 1000.0 + index / FPS, IMAGE, "synthetic")


def test_box_iou_matches_brute_force():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 50, (6, 2))
    a = np.hstack([a, a + rng.uniform(1, 30, (6, 2))])
    b = rng.uniform(0, 50, (5, 2))
    b = np.hstack([b, b + rng.uniform(1, 30, (5, 2))])
    got = box_iou(a, b)
    for i in range(6):
        for j in range(5):
            w = max(0.0, min(a[i, 2], b[j, 2]) - max(a[i, 0], b[j, 0]))
            h = max(0.0, min(a[i, 3], b[j, 3]) - max(a[i, 1], b[j, 1]))
            inter = w * h
            union = ((a[i, 2] - a[i, 0]) * (a[i, 3] - a[i, 1])
                     + (b[j, 2] - b[j, 0]) * (b[j, 3] - b[j, 1]) - inter)
            assert got[i, j] == pytest.approx(inter / union, abs=1e-12)


def test_mot_round_trip_and_ignored_rows(tmp_path):
    dets = Detections([[10, 20, 40, 100], [50.5, 60, 70, 120]], [0.9, 0.25], [3, 7])
    path = tmp_path / "t.txt"
    write_mot(path, [(4, dets)])
    assert path.read_text().splitlines()[0] == "4,3,10.00,20.00,30.00,80.00,0.9000,-1,-1,-1"
    back = read_mot(path)
    np.testing.assert_allclose(back[4].boxes, dets.boxes, atol=1e-2)
    assert back[4].track_ids.tolist() == [3, 7]
    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,0,0,10,20,1,-1,-1,-1\n1,2,50,50,10,20,0,-1,-1,-1\n")
    assert len(read_mot(gt)[1]) == 1  # conf 0: an ignored region
    assert len(read_mot(gt, keep_ignored=True)[1]) == 2
    assert read_mot(gt, scale=0.5)[1].boxes.tolist() == [[0, 0, 5, 10]]


def test_mot_bad_line_is_named(tmp_path):
    path = tmp_path / "det.txt"
    path.write_text("1,-1,1,2,3,4\n2,-1,x,2,3,4\n")
    with pytest.raises(FootageError, match="line 2"):
        read_mot(path)


def test_detection_scores_hand_counted():
    truth = {1: Detections([[0, 0, 10, 20], [100, 0, 110, 20]], [1, 1], [1, 2]),
             2: Detections([[0, 0, 10, 20]], [1], [1])}
    found = {1: Detections([[1, 0, 11, 20], [50, 50, 60, 70]], [0.9, 0.9]),  # 1 TP, 1 FP
             2: Detections([[0, 0, 10, 20], [0, 1, 10, 21]], [0.9, 0.8])}  # 1 TP, 1 duplicate
    scores = detection_scores(truth, found)
    assert (scores.true_positives, scores.false_positives, scores.missed) == (2, 2, 1)
    assert scores.recall == pytest.approx(2 / 3) and scores.precision == pytest.approx(0.5)


def _walker(start: tuple[float, float], velocity: tuple[float, float], frames: range,
            size: tuple[float, float] = (20, 50)) -> dict[int, np.ndarray]:
    return {f: np.array([start[0] + velocity[0] * f, start[1] + velocity[1] * f,
                         start[0] + velocity[0] * f + size[0],
                         start[1] + velocity[1] * f + size[1]], np.float32) for f in frames}


def _run(people: dict[int, dict[int, np.ndarray]], looks: dict[int, np.ndarray] | None,
         frames: int) -> tuple[dict[int, Detections], dict[int, Detections]]:
    tracker = Tracker()
    truth, found = {}, {}
    for f in range(frames):
        here = [(pid, boxes[f]) for pid, boxes in people.items() if f in boxes]
        ids = [pid for pid, _ in here]
        boxes = np.array([b for _, b in here], np.float32).reshape(-1, 4)
        emb = None if looks is None else np.array([looks[p] for p in ids]).reshape(len(ids), -1)
        dets = Detections(boxes, np.full(len(ids), 0.9), embeddings=emb)
        truth[f + 1] = Detections(boxes, np.ones(len(ids)), ids)
        found[f + 1] = tracker.update(dets, _frame(f))
    return truth, found


def _one_person(ids: list[int]) -> dict[int, Detections]:
    box = np.array([[10, 10, 30, 60]], np.float32)
    return {f + 1: Detections(box, np.ones(1), np.array([t])) for f, t in enumerate(ids)}


def test_hota_of_an_id_switch_halfway_is_the_hand_computed_value():
    """One person over 4 frames, the tracker switches ids after frame 2 with perfect boxes:
    DetA 1; each matched pair shares 2 of 4 frames, so AssA = 2 / (2 + 2 + 0) = 0.5 and
    HOTA = sqrt(1 * 0.5) at every IoU threshold (Luiten et al. 2021, eq. 6-10)."""
    require("trackeval", "HOTA (TrackEval, installed by make install)")
    truth = _one_person([7, 7, 7, 7])
    assert hota_scores(truth, truth) == pytest.approx(
        {"HOTA": 100.0, "DetA": 100.0, "AssA": 100.0, "LocA": 100.0})
    scores = hota_scores(truth, _one_person([1, 1, 2, 2]))
    assert scores["DetA"] == pytest.approx(100.0)
    assert scores["AssA"] == pytest.approx(50.0)
    assert scores["HOTA"] == pytest.approx(100.0 * np.sqrt(0.5))
    assert tracking_scores(truth, _one_person([1, 1, 2, 2]))["hota"] == pytest.approx(
        scores["HOTA"])


def test_a_box_found_in_a_frame_without_ground_truth_is_a_false_positive():
    """MOTChallenge scores every frame of the sequence: 4 right boxes and 1 box in a fifth
    frame nobody is in give MOTA 1 - 1/4 = 75 and DetA 4/5 at every threshold."""
    truth = _one_person([7, 7, 7, 7])
    found = {**truth, 5: Detections(np.array([[100, 10, 120, 60]], np.float32), np.ones(1),
                                    np.array([7]))}
    assert tracking_scores(truth, found)["mota"] == pytest.approx(75.0)
    if hota_scores(truth, found) is not None:
        assert hota_scores(truth, found)["DetA"] == pytest.approx(80.0)


def test_two_walkers_crossing_keep_their_ids():
    a = _walker((20, 100), (4, 0), range(60))
    b = _walker((260, 104), (-4, 0), range(60))
    truth, found = _run({1: a, 2: b}, None, 60)
    scores = tracking_scores(truth, found)
    assert scores["id_switches"] == 0 and scores["tracks"] == 2


def test_appearance_reidentifies_a_person_after_an_exit():
    """A person vanishes for 1.5 s and comes back 3 box widths away: motion alone cannot link
    the two parts (a new id); the embeddings can (one id)."""
    first = _walker((20, 100), (3, 0), range(0, 30))
    back = _walker((20 + 60, 100), (3, 0), range(45, 80))  # 108 px on from its exit
    person = {**first, **back}
    other = _walker((250, 30), (-2, 0), range(80))
    rng = np.random.default_rng(1)
    looks = {1: rng.normal(size=32), 2: rng.normal(size=32)}
    truth, plain = _run({1: person, 2: other}, None, 80)
    assert tracking_scores(truth, plain)["tracks"] == 3  # person 1 got a second id
    truth, seen = _run({1: person, 2: other}, looks, 80)
    scores = tracking_scores(truth, seen)
    assert scores["tracks"] == 2 and scores["id_switches"] == 0


def test_appearance_vetoes_a_swap_that_motion_would_make():
    """Two people meet, stop side by side and part; with distinct looks, nobody swaps."""
    rng = np.random.default_rng(2)
    looks = {1: rng.normal(size=32), 2: rng.normal(size=32)}
    a = {**_walker((20, 100), (5, 0), range(0, 25)),
         **{f: np.array([145, 100, 165, 150], np.float32) for f in range(25, 35)},
         **{f: np.array([145 - 5 * (f - 34), 100, 165 - 5 * (f - 34), 150], np.float32)
            for f in range(35, 60)}}
    b = {**_walker((280, 100), (-5, 0), range(0, 25)),
         **{f: np.array([155, 100, 175, 150], np.float32) for f in range(25, 35)},
         **{f: np.array([155 + 5 * (f - 34), 100, 175 + 5 * (f - 34), 150], np.float32)
            for f in range(35, 60)}}
    truth, found = _run({1: a, 2: b}, looks, 60)
    assert tracking_scores(truth, found)["id_switches"] == 0


def test_interpolate_gaps_fills_linearly_up_to_max_gap():
    tracks = {1: Detections([[0, 0, 10, 20]], [0.9], [5]),
              4: Detections([[30, 0, 40, 20]], [0.8], [5]),
              10: Detections([[90, 0, 100, 20]], [0.8], [5])}
    filled = interpolate_gaps(tracks, max_gap=3)
    assert sorted(filled) == [1, 2, 3, 4, 10]  # the gap 4 -> 10 (5 frames) stays open
    np.testing.assert_allclose(filled[2].boxes, [[10, 0, 20, 20]])
    np.testing.assert_allclose(filled[3].boxes, [[20, 0, 30, 20]])
    assert filled[3].track_ids.tolist() == [5]


def test_crop_quality_hand_computed():
    box = np.array([10, 10, 60, 138], np.float32)  # 50 x 128: full size, aspect 2.56
    assert crop_quality(box, 0.8, (320, 240), 0.25) == pytest.approx(0.8 * 0.75)
    edge = np.array([0, 10, 32, 74], np.float32)  # 64 high, touches the left edge
    assert crop_quality(edge, 1.0, (320, 240), 0.0) == pytest.approx(0.5 * 0.3)
    wide = np.array([10, 10, 110, 74], np.float32)  # wider than tall
    assert crop_quality(wide, 1.0, (320, 240), 0.0) == pytest.approx(0.5 * 0.5)


def test_tracklets_split_where_the_appearance_jumps_and_drop_short_tracks():
    rng = np.random.default_rng(3)
    look_a, look_b = rng.normal(size=16), rng.normal(size=16)
    builder = TrackletBuilder("1", "synthetic", TrackletSettings(min_observations=5, window=4,
                                                                 crops_per_track=2))
    image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
    for f in range(30):
        boxes = [[10 + f, 20, 40 + f, 110]]
        ids, looks = [1], [look_a if f < 15 else look_b]
        if f < 3:  # a 3-frame track: dropped
            boxes.append([200, 20, 230, 110])
            ids.append(2)
            looks.append(look_a)
        dets = Detections(np.array(boxes, np.float32), np.full(len(ids), 0.9), ids,
                          np.array(looks, np.float32))
        builder.add(dets, Frame("1", f, 1000.0 + f / FPS, image, "synthetic"))
    tracklets = builder.finish()
    assert [(t.first_frame, t.last_frame) for t in tracklets] == [(0, 14), (15, 29)]
    assert tracklets[0].track_id != tracklets[1].track_id
    assert all(t.source_track == 1 for t in tracklets)
    for t in tracklets:
        assert len(t.crops) == 2 and all(t.first_frame <= c.frame <= t.last_frame
                                         for c in t.crops)
        crop = t.crops[0]
        x1, y1, x2, y2 = (int(v) for v in crop.box)
        np.testing.assert_array_equal(crop.image, image[y1:y2, x1:x2])


def test_boxes_on_ignored_regions_are_neither_right_nor_wrong(tmp_path):
    from attreid.footage.mot import drop_ignored, split_ignored

    gt = tmp_path / "gt.txt"
    gt.write_text("1,1,0,0,10,20,1,-1,-1,-1\n1,2,50,50,10,20,0,-1,-1,-1\n")
    truth, ignored = split_ignored(read_mot(gt, keep_ignored=True))
    assert len(truth[1]) == 1 and len(ignored[1]) == 1
    found = {1: Detections([[0, 0, 10, 20], [50, 51, 60, 71], [200, 0, 210, 20]],
                           [0.9, 0.9, 0.9])}
    kept = drop_ignored(found, truth, ignored)
    assert kept[1].boxes.tolist() == [[0, 0, 10, 20], [200, 0, 210, 20]]
    scores = detection_scores(truth, kept)
    assert (scores.true_positives, scores.false_positives, scores.missed) == (1, 1, 0)


def test_tracks_of_a_second_source_of_one_camera_do_not_overwrite_the_first(tmp_path):
    """From the replay of issue 27: lobby_0900.mp4 then lobby_1000.mp4 as camera 'lobby'."""
    import json

    from attreid.footage.ingest import write_tracks
    from attreid.footage.pipeline import SourceTracks
    from attreid.footage.sources import SourceSpec

    def result(source: str) -> SourceTracks:
        spec = SourceSpec(tmp_path / source, "lobby")
        tracks = {1: Detections([[0, 0, 10, 20]], [0.9], [1])}
        return SourceTracks(spec, tracks, [], 1, 1.0, (320, 240), {1: 0.0})

    first = write_tracks(tmp_path / "t", result("lobby_0900.mp4"))
    second = write_tracks(tmp_path / "t", result("lobby_1000.mp4"))
    again = write_tracks(tmp_path / "t", result("lobby_0900.mp4"))
    assert [Path(p).name for p in first] == ["lobby.txt", "lobby.json"]
    assert [Path(p).name for p in second] == ["lobby_2.txt", "lobby_2.json"]
    assert again == first  # the same source writes its own file again
    assert json.loads(Path(second[1]).read_text())["source"].endswith("lobby_1000.mp4")
