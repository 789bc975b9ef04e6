"""Synthetic multi-camera footage with known boxes and identities (:func:`make_footage`).

The crop generator's people (:mod:`appearance`, :mod:`drawing`: identity ``N`` has the labels
and look of the generator's pid ``N`` for the same seed) walk through the scenes of several
cameras at different times (:mod:`footage_plan` schedules them, :mod:`footage_scene` draws the
scenes and figures). Each frame lays the figures over the camera's still scene farthest first,
then the lamp post in front, then the camera's finish (blur, light, colour cast, noise); the
ground truth comes from the same drawing: each figure's box and how much of it is left in view.

So the whole footage path (decode, detect, track, index, search across cameras) can be tested
with known answers and no real data. Same seed and arguments: byte-identical ground truth,
manifest and people files, and identical frames (JPEG frames byte-identical with one libjpeg; a
video's bytes may differ with the codec build, its decoded frames not).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

from attreid.data.appearance import _person, _rng
from attreid.data.footage_plan import _P_NOISE, Plan, Visit, make_plan
from attreid.data.footage_scene import (
    Scene,
    Sprite,
    draw_sprite,
    finish,
    look_of,
    make_scene,
    phase_of,
)
from attreid.data.records import DataError
from attreid.schema import describe
from attreid.utils.files import atomic_write_text

VISIBLE = 0.3
"""A ground-truth box with less than this fraction of its figure in view has conf 0 (ignored
by MOTChallenge evaluation, as :func:`attreid.footage.mot.read_mot` does)."""
JPEG_QUALITY = 95
"""Quality of the frames of a frame folder (PNG of noisy frames is 5x larger and 10x slower)."""
_KIND_PERSON = 0  # the generator's kind of identified persons (synth._KIND_PERSON)


@dataclass(frozen=True)
class FootageInfo:
    """What :func:`make_footage` wrote.

    Attributes:
        out: the output folder.
        sources: per camera, its video file or frame folder.
        ground_truth: per camera, its MOTChallenge ``cam<N>_gt.txt``.
        manifest: ``manifest.csv``.
        people: ``people.csv``.
        frames: frames per camera.
        rows: ground-truth rows over all cameras (conf 0 ones included).
        spans: identity -> ``(camera, first frame, last frame)`` runs (1-based, inclusive) of
            the frames where some of the person is inside the frame, in time order.
        reentries: ``(identity, camera)`` of paths that leave the frame and come back within
            the recording (none when ``seconds`` is too short for it, about 6 s).
    """

    out: Path
    sources: tuple[Path, ...]
    ground_truth: tuple[Path, ...]
    manifest: Path
    people: Path
    frames: int
    rows: int
    spans: dict[int, tuple[tuple[int, int, int], ...]]
    reentries: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class _Placed:
    """A figure laid on a frame: its sprite, top-left corner and depth (foot y)."""

    identity: int
    sprite: Sprite
    left: int
    top: int
    depth: float


# ---------------------------------------------------------------- one frame


def _placed(plan: Plan, visits: list[Visit], camera: int, t: float,
            sprites: dict[tuple[Any, ...], Sprite], seed: int, blur: float) -> list[_Placed]:
    """The figures of ``camera`` at time ``t``, farthest first."""
    ground = plan.grounds[camera - 1]
    out = []
    for visit in visits:
        where = visit.at(t)
        if where is None:
            continue
        x, y, leftward, walked = where
        person = _person(seed, _KIND_PERSON, visit.identity)
        factor = person.look.height * (0.74, 0.94, 1.0, 0.97)[person["age"]]  # as drawing.py
        scale = ground.height / 240
        low, high = int(np.ceil(40 * scale / factor)), int(110 * scale / factor)
        depth = int(np.clip(2 * round(ground.depth_height(y) / 2), low, high))  # even: fewer
        key = (visit.identity, depth, phase_of(walked, depth), visit.front, leftward)
        if key not in sprites:
            sprites[key] = draw_sprite(person, key[1], key[2], visit.front, leftward, blur)
        sprite = sprites[key]
        out.append(_Placed(visit.identity, sprite, int(round(x)) - sprite.foot[0],
                           int(round(y)) - sprite.foot[1], y))
    return sorted(out, key=lambda p: (p.depth, p.identity))


def _window(p: _Placed, width: int, height: int) -> tuple[slice, slice, slice, slice] | None:
    """Frame rows/cols and sprite rows/cols where the sprite overlaps the frame."""
    h, w = p.sprite.solid.shape
    y0, x0 = max(p.top, 0), max(p.left, 0)
    y1, x1 = min(p.top + h, height), min(p.left + w, width)
    if y1 <= y0 or x1 <= x0:
        return None
    return (slice(y0, y1), slice(x0, x1), slice(y0 - p.top, y1 - p.top),
            slice(x0 - p.left, x1 - p.left))


def _compose(scene: Scene, figures: list[_Placed]) -> np.ndarray:
    """The still scene with the figures laid on it, farthest first: (H, W, 3) float32."""
    frame = scene.still.copy()
    height, width = frame.shape[:2]
    for p in figures:
        win = _window(p, width, height)
        if win is None:
            continue
        fy, fx, sy, sx = win
        frame[fy, fx] = (frame[fy, fx] * (1 - p.sprite.alpha[sy, sx])
                         + p.sprite.rgb[sy, sx] * scene.light[:, fx])
    return frame


def _truth(scene: Scene, figures: list[_Placed]) -> list[tuple[int, int, int, int, int, float]]:
    """``(identity, left, top, width, height, visible fraction)`` of the figures inside the
    frame; boxes clipped to it, in depth order (farthest first)."""
    covered = scene.post_solid.copy()
    height, width = covered.shape
    rows = []
    for p in reversed(figures):  # nearest first
        x0, y0, x1, y1 = p.sprite.box
        left, top = max(p.left + x0, 0), max(p.top + y0, 0)
        right, bottom = min(p.left + x1, width), min(p.top + y1, height)
        win = _window(p, width, height)
        if right <= left or bottom <= top or win is None:
            continue
        fy, fx, sy, sx = win
        solid = p.sprite.solid[sy, sx]
        seen = int((solid & ~covered[fy, fx]).sum())
        covered[fy, fx] |= solid
        rows.append((p.identity, left, top, right - left, bottom - top,
                     seen / max(p.sprite.area, 1)))
    return rows[::-1]


# ---------------------------------------------------------------- writers


class _Sink(Protocol):
    def write(self, rgb: np.ndarray) -> None: ...

    def close(self) -> Path: ...


class _FrameFolder:
    """JPEG frames ``000001.jpg`` ... (quality 95, as MOTChallenge's ``img1/``) into a hidden
    folder, renamed into place on close."""

    def __init__(self, path: Path) -> None:
        self.path, self.tmp, self.count = path, path.with_name(f".{path.name}.tmp"), 0
        self.tmp.mkdir()

    def write(self, rgb: np.ndarray) -> None:
        self.count += 1
        Image.fromarray(rgb).save(self.tmp / f"{self.count:06d}.jpg", quality=JPEG_QUALITY)

    def close(self) -> Path:
        os.replace(self.tmp, self.path)
        return self.path


class _Video:
    """An MPEG-4 Part 2 (``mp4v``) video written to a hidden file, renamed on close."""

    def __init__(self, path: Path, fps: float, size: tuple[int, int]) -> None:
        import cv2  # only here: the data layer does not need OpenCV otherwise

        self.cv2, self.path = cv2, path
        self.tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            raise DataError(f"{path}: this OpenCV build cannot write mp4v video; make the "
                            "footage as frame folders (video=False)")

    def write(self, rgb: np.ndarray) -> None:
        self.writer.write(self.cv2.cvtColor(rgb, self.cv2.COLOR_RGB2BGR))

    def close(self) -> Path:
        self.writer.release()
        os.replace(self.tmp, self.path)
        return self.path


def _sink(out: Path, camera: int, video: bool, fps: float, size: tuple[int, int]) -> _Sink:
    if video:
        return _Video(out / f"cam{camera}.mp4", fps, size)
    return _FrameFolder(out / f"cam{camera}")


def _gt_text(rows: list[tuple[int, int, int, int, int, int, float]]) -> str:
    """MOTChallenge lines ``frame,id,left,top,width,height,conf,-1,-1,-1``, by frame, then id."""
    lines = [f"{f},{i},{x},{y},{w},{h},{int(v >= VISIBLE)},-1,-1,-1"
             for f, i, x, y, w, h, v in sorted(rows, key=lambda r: (r[0], r[1]))]
    return "".join(line + "\n" for line in lines)


def _runs(frames: list[int]) -> list[tuple[int, int]]:
    """Maximal runs of consecutive frame numbers: ``[(first, last), ...]``."""
    runs: list[tuple[int, int]] = []
    for f in sorted(frames):
        if runs and f == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], f)
        else:
            runs.append((f, f))
    return runs


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds")


def _write_tables(out: Path, plan: Plan, sources: list[Path], base: datetime, seed: int,
                  people: int, spans: dict[int, list[tuple[int, int, int]]]) -> None:
    """``manifest.csv`` (path,camera,start,fps) and ``people.csv``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "camera", "start", "fps"])
    for cam, source in enumerate(sources, 1):
        start = base + timedelta(seconds=plan.starts[cam - 1])
        writer.writerow([source.name, cam, _iso(start), f"{plan.fps:g}"])
    atomic_write_text(out / "manifest.csv", buf.getvalue())
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    task_names = list(describe([0] * 12))
    writer.writerow(["identity", *task_names, "cameras", "frames", "times"])
    for identity in range(1, people + 1):
        runs = spans.get(identity, [])
        names = describe(_person(seed, _KIND_PERSON, identity).labels)
        times = []
        for cam, first, last in runs:
            start = base + timedelta(seconds=plan.starts[cam - 1])
            times.append(f"{cam}@{_iso(start + timedelta(seconds=(first - 1) / plan.fps))}/"
                         f"{_iso(start + timedelta(seconds=(last - 1) / plan.fps))}")
        writer.writerow([identity, *(names[t] for t in task_names),
                         ";".join(str(c) for c in sorted({r[0] for r in runs})),
                         ";".join(f"{c}:{a}-{b}" for c, a, b in runs), ";".join(times)])
    atomic_write_text(out / "people.csv", buf.getvalue())


# ---------------------------------------------------------------- entry point


def _render_camera(out: Path, plan: Plan, camera: int, seed: int, video: bool
                   ) -> tuple[Path, list[tuple[int, int, int, int, int, int, float]]]:
    """Write one camera's frames and return its source and ground-truth rows."""
    ground = plan.grounds[camera - 1]
    scene = make_scene(seed, camera, ground)
    visits = [v for v in plan.visits if v.camera == camera]
    sink = _sink(out, camera, video, plan.fps, (ground.width, ground.height))
    noise = _rng(seed, _P_NOISE, camera)
    sprites: dict[tuple[Any, ...], Sprite] = {}
    rows = []
    for k in range(plan.frames()):
        t = plan.starts[camera - 1] + k / plan.fps
        figures = _placed(plan, visits, camera, t, sprites, seed, scene.blur)
        sink.write(finish(scene, _compose(scene, figures), noise))
        rows += [(k + 1, *row) for row in _truth(scene, figures)]
    return sink.close(), rows


def _remove_partial(out: Path) -> None:
    """Remove the hidden, half-written sources of a failed or interrupted run."""
    for leftover in out.glob(".cam*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def _check_args(out: Path, cameras: int, people: int, seconds: float, fps: float,
                size: tuple[int, int], seed: int, start: str) -> datetime:
    def whole(value: object, low: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= low

    if not whole(cameras, 1) or cameras > 99 or not whole(people, 1) or people > 999:
        raise DataError(f"footage needs 1..99 cameras and 1..999 people, got {cameras!r} "
                        f"cameras and {people!r} people")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (seconds, fps))
    if not (numbers and 0 < seconds < 1e6 and 0 < fps < 1e4 and round(seconds * fps) >= 1):
        raise DataError(f"footage needs positive seconds and fps with at least one frame, got "
                        f"{seconds!r} s at {fps!r} fps")
    if len(size) != 2 or not whole(size[0], 64) or not whole(size[1], 48):
        raise DataError(f"footage size must be (width >= 64, height >= 48) integers, got "
                        f"{size!r}")
    if not whole(seed, 0):
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"output {out} exists and is not an empty folder; give a new path")
    try:
        base = datetime.fromisoformat(start.replace("Z", "+00:00"))
    except (AttributeError, ValueError):
        raise DataError(f"start {start!r} is not an ISO 8601 time such as "
                        "2026-01-05T09:00:00+00:00") from None
    return base if base.tzinfo else base.replace(tzinfo=timezone.utc)


def make_footage(out: Path | str, cameras: int = 3, people: int = 6, seconds: float = 20.0,
                 fps: float = 10.0, size: tuple[int, int] = (320, 240), seed: int = 0,
                 video: bool = True, start: str = "2026-01-05T09:00:00+00:00") -> FootageInfo:
    """Write synthetic footage of ``people`` walking past ``cameras`` cameras.

    Each camera records ``seconds`` of its own scene, starting a few seconds after the one
    before; people walk the cameras in order (some pass one, some all), cross each frame at a
    roughly constant speed, 40-110 px tall at a frame height of 240 (scaled with it), seen the
    same in every camera. One person walks out of its first camera and back in; two people
    cross each other in one camera; a lamp post stands in front of the walkers in every scene.

    Output layout (``N`` = 1..cameras)::

        out/cam<N>.mp4      video (mp4v, ``fps``), or with video=False the folder
        out/cam<N>/         of JPEG frames 000001.jpg, 000002.jpg, ...
        out/cam<N>_gt.txt   MOTChallenge ground truth: frame (1-based), identity, left, top,
                            width, height, conf, -1, -1, -1; the box of the figure's drawn
                            pixels clipped to the frame, in 0-based pixels of the frame (as
                            attreid.footage.mot reads it); one row per person whose figure is
                            partly inside the frame; conf 1, or 0 when less than 30 % of the
                            figure is in view (outside the frame or behind others / the post)
        out/manifest.csv    path,camera,start,fps: start in ISO 8601, different per camera
        out/people.csv      identity, the 12 attributes by class name (age ... downcolor),
                            cameras (1;3), frames (camera:first-last runs, 1-based, of the
                            frames with a row), times (camera@start/end in ISO 8601)

    Args:
        out: a new (or empty) output folder.
        cameras: number of cameras (1..99; the six camera looks of the crop generator repeat).
        people: number of identities, numbered 1..people.
        seconds: length of each camera's recording.
        fps: frames a second.
        size: frame (width, height) in pixels.
        seed: makes everything reproducible.
        video: write ``.mp4`` videos (needs OpenCV) instead of JPEG frame folders.
        start: ISO 8601 time of the first camera's first frame (UTC without an offset).

    Returns:
        what was written, see :class:`FootageInfo`.

    Raises:
        DataError: a bad argument, a non-empty output folder, or no mp4v writer in OpenCV.
    """
    out = Path(out)
    base = _check_args(out, cameras, people, seconds, fps, size, seed, start)
    horizons = tuple(look_of(c).horizon for c in range(1, cameras + 1))
    plan = make_plan(cameras, people, seconds, fps, (int(size[0]), int(size[1])), seed,
                     horizons)
    out.mkdir(parents=True, exist_ok=True)
    sources, truths, every_row = [], [], []
    try:
        for cam in range(1, cameras + 1):
            source, rows = _render_camera(out, plan, cam, seed, video)
            sources.append(source)
            truths.append(out / f"cam{cam}_gt.txt")
            atomic_write_text(truths[-1], _gt_text(rows))
            every_row += [(cam, *r) for r in rows]
    except BaseException:
        _remove_partial(out)
        raise
    spans: dict[int, list[tuple[int, int, int]]] = {}
    for cam in range(1, cameras + 1):
        for identity in sorted({r[2] for r in every_row if r[0] == cam}):
            frames = [r[1] for r in every_row if r[0] == cam and r[2] == identity]
            spans.setdefault(identity, []).extend((cam, a, b) for a, b in _runs(frames))
    ordered = {i: sorted(s, key=lambda r: plan.starts[r[0] - 1] + r[1] / plan.fps)
               for i, s in sorted(spans.items())}
    _write_tables(out, plan, sources, base, seed, people, ordered)
    return FootageInfo(out, tuple(sources), tuple(truths), out / "manifest.csv",
                       out / "people.csv", plan.frames(), len(every_row),
                       {i: tuple(s) for i, s in ordered.items()},
                       tuple((v.identity, v.camera) for v in plan.visits if v.reentry
                             and sum(r[0] == v.camera for r in ordered.get(v.identity, [])) > 1))
