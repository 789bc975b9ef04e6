"""Tests of the synthetic multi-camera footage (attreid.data.footage_synth with its plan and
scene): files, ground truth against the decoded pixels, identities across cameras, times,
re-entry, occlusion, determinism and the video round trip."""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from attreid.data.appearance import _person
from attreid.data.footage_scene import look_of
from attreid.data.footage_synth import FootageInfo, make_footage
from attreid.data.records import DataError
from attreid.schema import TASK_NAMES, describe
from conftest import require

SIZE = (320, 240)
FPS = 5.0
START = "2026-03-02T08:15:00+00:00"


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> FootageInfo:
    """3 cameras x 20 s at 5 fps, 6 people, JPEG frame folders."""
    out = tmp_path_factory.mktemp("footage") / "scene"
    return make_footage(out, cameras=3, people=6, seconds=20, fps=FPS, size=SIZE, seed=0,
                        video=False, start=START)


def _gt(path: Path) -> np.ndarray:
    """(N, 10) int array of a MOTChallenge file."""
    return np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)


def _frames(folder: Path) -> np.ndarray:
    """(T, H, W, 3) uint8 decoded frames of a frame folder, in order."""
    return np.stack([np.asarray(Image.open(p).convert("RGB"))
                     for p in sorted(folder.glob("*.jpg"))])


@pytest.fixture(scope="module")
def decoded(scene: FootageInfo) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Camera -> its decoded frames and its empty scene (the median frame: people pass)."""
    out = {}
    for cam, src in enumerate(scene.sources, 1):
        frames = _frames(src)
        out[cam] = frames, np.median(frames[::2], axis=0).astype(np.uint8)
    return out


def _changed(frame: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels that differ from the empty scene by more than noise and JPEG do."""
    return np.abs(frame.astype(np.int16) - empty.astype(np.int16)).max(axis=2) > 30


def _lone(rows: np.ndarray) -> list[np.ndarray]:
    """Rows of frames that show exactly one person, fully in view, 12 px or more from the
    edges; every fourth such frame."""
    by_frame = defaultdict(list)
    for row in rows:
        by_frame[int(row[0])].append(row)
    out = []
    for frame in sorted(by_frame):
        (row, *others) = by_frame[frame]
        x, y, w, h = row[2:6]
        if not others and row[6] == 1 and x >= 12 and y >= 12 and x + w <= SIZE[0] - 12 \
                and y + h <= SIZE[1] - 12:
            out.append(row)
    return out[::4]


def test_layout_and_counts(scene: FootageInfo) -> None:
    out = scene.out
    assert sorted(p.name for p in out.iterdir()) == [
        "cam1", "cam1_gt.txt", "cam2", "cam2_gt.txt", "cam3", "cam3_gt.txt", "manifest.csv",
        "people.csv"]
    assert scene.frames == 100
    for src in scene.sources:
        names = sorted(p.name for p in src.iterdir())
        assert names == [f"{k:06d}.jpg" for k in range(1, 101)]
        assert Image.open(src / names[0]).size == SIZE
    assert scene.rows == sum(len(_gt(p)) for p in scene.ground_truth)


def test_ground_truth_rows_are_valid(scene: FootageInfo) -> None:
    for path in scene.ground_truth:
        rows = _gt(path)
        assert rows.shape[1] == 10 and len(rows) > 20
        frame, ident, x, y, w, h, conf = rows[:, :7].T
        assert frame.min() >= 1 and frame.max() <= scene.frames
        assert set(ident) <= set(range(1, 7))
        assert (x >= 0).all() and (y >= 0).all() and (w > 0).all() and (h > 0).all()
        assert (x + w <= SIZE[0]).all() and (y + h <= SIZE[1]).all()
        assert set(conf) <= {0, 1} and (rows[:, 7:] == -1).all()
        assert len({(f, i) for f, i in zip(frame, ident)}) == len(rows)  # one box a person
        inside = (x > 0) & (y > 0) & (x + w < SIZE[0]) & (y + h < SIZE[1])
        assert h[inside].min() >= 40 and h[inside].max() <= 110  # full-body size
        assert list(rows[:, 0]) == sorted(rows[:, 0])


def test_boxes_match_the_drawn_pixels(
        scene: FootageInfo, decoded: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """Where one person is in view, the pixels that differ from the empty scene (the median
    over time) fill the gt box, reach its four sides (within 2 px, in 9 frames of 10: the lamp
    post may hide a side) and none lie in a ring 3-10 px around it."""
    sides, checked = [], 0
    for cam, (frames, empty) in decoded.items():
        for frame, _, x, y, w, h, *_ in _lone(_gt(scene.ground_truth[cam - 1])):
            changed = _changed(frames[frame - 1], empty)
            assert changed[y:y + h, x:x + w].mean() > 0.25, (cam, frame)
            outer = changed[y - 10:y + h + 10, x - 10:x + w + 10].copy()
            outer[7:-7, 7:-7] = False
            assert not outer.any(), (cam, frame, outer.sum())
            rows, cols = np.nonzero(changed[y - 6:y + h + 6, x - 6:x + w + 6])
            found = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]) - 6
            sides.append(np.abs(found - [0, 0, w, h]).max())
            checked += 1
    assert checked >= 6
    assert np.mean(np.asarray(sides) <= 2) >= 0.9, sides


def _descriptor(frames: np.ndarray, empty: np.ndarray, rows: list[np.ndarray],
                light: np.ndarray) -> np.ndarray:
    """Median RGB of the changed pixels in the upper and lower halves of a person's boxes,
    divided by the camera's light (gain x colour cast, per channel)."""
    parts: list[list[np.ndarray]] = [[], []]
    for frame, _, x, y, w, h, *_ in rows:
        image = frames[frame - 1]
        changed = _changed(image, empty)
        for half, (top, bottom) in enumerate(((y + h // 5, y + h // 2), (y + h // 2, y + h))):
            mask = changed[top:bottom, x:x + w]
            parts[half].append(image[top:bottom, x:x + w][mask])
    medians = [np.median(np.concatenate(p), axis=0) / light for p in parts]
    return np.concatenate(medians)


def test_identities_look_the_same_in_every_camera(
        scene: FootageInfo, decoded: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    """Re-identification by plain colour: with each camera's declared gain and colour cast
    undone, a person's look in one camera is nearer to their own look in another camera than
    to anyone else's there (the raw colours differ by up to 40 % between cameras)."""
    looks: dict[int, dict[int, np.ndarray]] = defaultdict(dict)
    for cam, (frames, empty) in decoded.items():
        rows = _gt(scene.ground_truth[cam - 1])
        people_in = defaultdict(int)
        for row in rows:
            people_in[int(row[0])] += 1
        light = look_of(cam).gain * np.asarray(look_of(cam).cast)
        for ident in np.unique(rows[:, 1]):
            mine = [r for r in rows if r[1] == ident and r[6] == 1]
            alone = [r for r in mine if people_in[int(r[0])] == 1] or mine
            looks[int(ident)][cam] = _descriptor(frames, empty, alone[::2], light)
    pairs = 0
    for ident, by_cam in looks.items():
        for a in by_cam:
            for b in by_cam:
                others = [looks[o][b] for o in looks if o != ident and b in looks[o]]
                if a == b or not others:
                    continue
                own = np.abs(by_cam[a] - by_cam[b]).mean()
                assert own < min(np.abs(by_cam[a] - d).mean() for d in others), (ident, a, b)
                pairs += 1
    assert pairs >= 4


def test_people_file_and_spans(scene: FootageInfo) -> None:
    with open(scene.people, newline="") as f:
        people = list(csv.DictReader(f))
    assert [int(p["identity"]) for p in people] == list(range(1, 7))
    multi = 0
    for p in people:
        ident = int(p["identity"])
        assert {t: p[t] for t in TASK_NAMES} == describe(_person(0, 0, ident).labels)
        runs = [(int(c), *map(int, r.split("-"))) for c, r in
                (s.split(":") for s in p["frames"].split(";"))]
        assert tuple(runs) == scene.spans[ident]
        assert p["cameras"] == ";".join(str(c) for c in sorted({r[0] for r in runs}))
        multi += len({r[0] for r in runs}) > 1
        for cam, first, last in runs:  # the runs are the frames with a gt row
            rows = _gt(scene.ground_truth[cam - 1])
            frames = set(rows[rows[:, 1] == ident, 0])
            assert set(range(first, last + 1)) <= frames
            assert first - 1 not in frames and last + 1 not in frames
    assert multi >= 2 and any(len({r[0] for r in scene.spans[i]}) == 1 for i in scene.spans)


def test_manifest_times(scene: FootageInfo) -> None:
    with open(scene.manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == ["cam1", "cam2", "cam3"]
    assert [r["camera"] for r in rows] == ["1", "2", "3"] and {r["fps"] for r in rows} == {"5"}
    starts = [datetime.fromisoformat(r["start"]) for r in rows]
    assert starts[0] == datetime.fromisoformat(START)
    assert all(b - a >= timedelta(seconds=1) for a, b in zip(starts, starts[1:]))
    with open(scene.people, newline="") as f:  # people's times follow from frame and start
        for person in csv.DictReader(f):
            for span, times in zip(person["frames"].split(";"), person["times"].split(";")):
                cam, first_last = span.split(":")
                first = int(first_last.split("-")[0])
                assert times.startswith(f"{cam}@")
                begin = datetime.fromisoformat(times[len(cam) + 1:].split("/")[0])
                assert begin == starts[int(cam) - 1] + timedelta(seconds=(first - 1) / FPS)
    # one shared clock: someone seen in two cameras is seen in the later camera later
    for ident, spans in scene.spans.items():
        times = [starts[c - 1] + timedelta(seconds=(a - 1) / FPS) for c, a, _ in spans]
        assert times == sorted(times), ident


def test_a_person_leaves_and_comes_back(scene: FootageInfo) -> None:
    assert scene.reentries
    for ident, cam in scene.reentries:
        runs = [(a, b) for c, a, b in scene.spans[ident] if c == cam]
        assert len(runs) >= 2
        gap = runs[1][0] - runs[0][1] - 1
        assert FPS * 0.5 <= gap <= FPS * 6  # out of view for a moment, not for good
        rows = _gt(scene.ground_truth[cam - 1])
        frames = rows[rows[:, 1] == ident, 0]
        assert not set(range(runs[0][1] + 1, runs[1][0])) & set(frames)


def test_people_occlude_each_other(scene: FootageInfo) -> None:
    """Some boxes overlap another person's, and some boxes fully inside the frame are marked
    mostly hidden (conf 0)."""
    overlaps = hidden_inside = 0
    for path in scene.ground_truth:
        rows = _gt(path)
        for frame in np.unique(rows[:, 0]):
            boxes = rows[rows[:, 0] == frame]
            for i in range(len(boxes)):
                for j in range(i + 1, len(boxes)):
                    (xa, ya, wa, ha), (xb, yb, wb, hb) = boxes[i, 2:6], boxes[j, 2:6]
                    ix = min(xa + wa, xb + wb) - max(xa, xb)
                    iy = min(ya + ha, yb + hb) - max(ya, yb)
                    overlaps += ix > 0.5 * min(wa, wb) and iy > 0.5 * min(ha, hb)
        x, y, w, h, conf = rows[:, 2:7].T
        inside = (x > 0) & (x + w < SIZE[0])
        hidden_inside += int((inside & (conf == 0)).sum())
    assert overlaps >= 3 and hidden_inside >= 1


def test_same_seed_same_footage(tmp_path: Path) -> None:
    kwargs = dict(cameras=2, people=3, seconds=6, fps=5, size=(160, 120), video=False)
    a = make_footage(tmp_path / "a", seed=4, **kwargs)
    b = make_footage(tmp_path / "b", seed=4, **kwargs)
    c = make_footage(tmp_path / "c", seed=5, **kwargs)
    for name in ("cam1_gt.txt", "cam2_gt.txt", "manifest.csv", "people.csv"):
        assert (a.out / name).read_bytes() == (b.out / name).read_bytes(), name
    for cam in ("cam1", "cam2"):
        assert np.array_equal(_frames(a.out / cam), _frames(b.out / cam))
    assert (a.out / "people.csv").read_bytes() != (c.out / "people.csv").read_bytes()
    assert not np.array_equal(_frames(a.out / "cam1"), _frames(c.out / "cam1"))


def test_video_round_trip(tmp_path: Path) -> None:
    """The mp4 decodes through cv2.VideoCapture to the declared frames, which show what the
    frame folder of the same footage shows."""
    cv2 = require("cv2", "footage video needs OpenCV (pip install 'attreid[footage]')")
    kwargs = dict(cameras=1, people=2, seconds=4, fps=10, size=(160, 120), seed=2)
    info = make_footage(tmp_path / "v", video=True, **kwargs)
    still = _frames(make_footage(tmp_path / "f", video=False, **kwargs).sources[0])
    assert info.sources[0].name == "cam1.mp4" and not list(info.out.glob(".*"))
    capture = cv2.VideoCapture(str(info.sources[0]))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0)
    frames = []
    while True:
        ok, image = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    capture.release()
    assert len(frames) == info.frames == 40
    assert frames[0].shape == (120, 160, 3)
    assert np.abs(np.stack(frames).astype(np.int16) - still).mean() < 4.0
    with open(info.manifest, newline="") as f:
        assert next(csv.DictReader(f))["path"] == "cam1.mp4"


def test_bad_arguments_are_named(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(DataError, match="not an empty folder"):
        make_footage(tmp_path / "full", video=False)
    with pytest.raises(DataError, match="0 cameras"):
        make_footage(tmp_path / "a", cameras=0, video=False)
    with pytest.raises(DataError, match="'9am'"):
        make_footage(tmp_path / "b", start="9am", video=False)
    with pytest.raises(DataError, match="width >= 64"):
        make_footage(tmp_path / "c", size=(32, 240), video=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
