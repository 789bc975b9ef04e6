"""Footage sources: frame folders and video files with camera, start time and rate; manifests;
and the bad inputs of issue 27 (unreadable, zero-length and truncated videos, gaps, mixed sizes,
a camera used twice) each named."""

from __future__ import annotations

import warnings
from datetime import datetime, timezone

import numpy as np
import pytest

from conftest import require

cv2 = require("cv2", "footage sources (the footage extra)")

from attreid.footage.detections import FootageError  # noqa: E402
from attreid.footage.sources import (  # noqa: E402
    SourceSpec,
    format_time,
    parse_time,
    read_frames,
    read_manifest,
)

START = "2026-12-01T09:30:00"
EPOCH = datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc).timestamp()


def _frames(folder, count, size=(64, 48), names="{:06d}.png", skip=()):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        if i in skip:
            continue
        image = np.full((size[1], size[0], 3), (i * 7) % 256, np.uint8)
        image[0, 0] = (0, 0, 255)  # BGR red marker
        cv2.imwrite(str(folder / names.format(i + 1)), image)
    return folder


def _video(path, count, size=(64, 48), fps=10.0):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(count):
        writer.write(np.full((size[1], size[0], 3), (i * 9) % 256, np.uint8))
    writer.release()
    return path


def test_parse_time_iso_offset_and_utc():
    assert parse_time(START) == EPOCH
    assert parse_time("2026-12-01T10:30:00+01:00") == EPOCH
    assert parse_time("2026-12-01T09:30:00Z") == EPOCH
    assert parse_time("12.5") == 12.5
    assert format_time(EPOCH + 0.4) == "2026-12-01T09:30:00.400Z"
    with pytest.raises(FootageError, match="not a time"):
        parse_time("yesterday", "--start")


def test_frame_folder_times_stride_and_bgr(tmp_path):
    folder = _frames(tmp_path / "cam", 10)
    frames = list(read_frames(SourceSpec(folder, "3", EPOCH, fps=5.0), stride=3))
    assert [f.index for f in frames] == [0, 3, 6, 9]
    assert [f.time - EPOCH for f in frames] == pytest.approx([0, 0.6, 1.2, 1.8])
    assert frames[0].camera == "3" and frames[0].size == (64, 48)
    assert frames[0].image[0, 0].tolist() == [0, 0, 255]  # OpenCV's BGR order kept


def test_target_fps_thins_by_time(tmp_path):
    folder = _frames(tmp_path / "cam", 20)
    frames = list(read_frames(SourceSpec(folder, "1", 0.0, fps=10.0), target_fps=2.5))
    assert [f.index for f in frames] == [0, 4, 8, 12, 16]


def test_frame_folder_needs_fps_and_frames(tmp_path):
    folder = _frames(tmp_path / "cam", 3)
    with pytest.raises(FootageError, match="needs its frame rate"):
        list(read_frames(SourceSpec(folder, "1")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FootageError, match="no frames"):
        list(read_frames(SourceSpec(tmp_path / "empty", "1", fps=5)))
    with pytest.raises(FootageError, match="not found"):
        list(read_frames(SourceSpec(tmp_path / "missing.mp4", "1")))


def test_frame_folder_gaps_and_mixed_sizes_warn(tmp_path):
    folder = _frames(tmp_path / "cam", 6, skip=(3,))
    cv2.imwrite(str(folder / "000007.png"), np.zeros((30, 20, 3), np.uint8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frames = list(read_frames(SourceSpec(folder, "1", fps=5)))
    text = " ".join(str(w.message) for w in caught)
    assert "jump 1 time" in text and "000003.png" in text
    assert "20x30" in text and len(frames) == 6


def test_video_frames_and_times(tmp_path):
    video = _video(tmp_path / "cam.avi", 12, fps=10.0)
    frames = list(read_frames(SourceSpec(video, "2", EPOCH)))
    assert len(frames) == 12 and frames[-1].index == 11
    assert [f.time - EPOCH for f in frames] == pytest.approx(np.arange(12) / 10.0, abs=1e-3)
    part = list(read_frames(SourceSpec(video, "2", EPOCH), first=4, last=7, stride=2))
    assert [f.index for f in part] == [4, 6]


def test_bad_videos_are_named(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(FootageError, match="empty.mp4"):
        list(read_frames(SourceSpec(empty, "1")))
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(FootageError, match="junk.mp4"):
        list(read_frames(SourceSpec(junk, "1")))
    video = _video(tmp_path / "whole.avi", 30)
    data = video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        frames = list(read_frames(SourceSpec(cut, "1")))
    assert 0 < len(frames) < 30  # the frames before the cut are kept


def test_manifest_csv_and_yaml(tmp_path):
    _frames(tmp_path / "a", 2)
    _video(tmp_path / "b.avi", 3)
    (tmp_path / "m.csv").write_text(f"path,camera,start,fps\na,1,{START},7\n"
                                    f"b.avi,lobby,2026-12-01T10:30:00+01:00,\n")
    specs = read_manifest(tmp_path / "m.csv")
    assert [(s.camera, s.start, s.fps) for s in specs] == [("1", EPOCH, 7.0),
                                                           ("lobby", EPOCH, None)]
    assert specs[0].path == tmp_path / "a"
    (tmp_path / "m.yaml").write_text(f"sources:\n  - {{path: a, camera: 4, start: '{START}', "
                                     "fps: 7}\n")
    assert read_manifest(tmp_path / "m.yaml")[0].camera == "4"


def test_manifest_errors_name_the_row(tmp_path):
    (tmp_path / "dup.csv").write_text("path,camera,start\na,1,\nb,1,\n")
    with pytest.raises(FootageError, match="camera '1' is used twice"):
        read_manifest(tmp_path / "dup.csv")
    (tmp_path / "col.csv").write_text("file,camera\na,1\n")
    with pytest.raises(FootageError, match="lacks the column"):
        read_manifest(tmp_path / "col.csv")
    (tmp_path / "time.csv").write_text("path,camera,start\na,1,noon\n")
    with pytest.raises(FootageError, match="line 2"):
        read_manifest(tmp_path / "time.csv")
