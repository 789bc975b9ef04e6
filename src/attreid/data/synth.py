"""A deterministic synthetic pedestrian dataset in the Market-1501 or course layout.

:mod:`appearance` samples each identity's 12 task labels and look (and holds the cameras'
settings), :mod:`drawing` and :mod:`camera` draw the images; this module plans the identities
and images, writes them in a layout with its label file and README, and is the entry point
(:func:`generate`).

The split follows Market-1501: half of the identities (rounded down) train, the others test; a
test identity has one query image per camera it is seen in (two or more cameras) and several
gallery images on each of them; the gallery also holds distractors (id 0) and junk (id -1).

Randomness is explicit: identity ``pid`` draws its labels and look from generators seeded with
``(seed, purpose, pid)``, every image from ``(seed, purpose, pid, index)``, so the same seed gives
byte-identical files and an identity looks the same whatever the image counts.
"""

from __future__ import annotations

import csv
import io
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import scipy.io

from attreid.data.appearance import _P_ORDER, _P_PLAN, _P_SHOT, NUM_CAMERAS, _person, _rng
from attreid.data.camera import _Renderer
from attreid.data.records import DISTRACTOR_ID, JUNK_ID
from attreid.schema import CSV_COLUMNS, RAW_ATTRIBUTES, tasks_to_raw

LAYOUTS: tuple[str, ...] = ("market", "course")
MIN_IDS = 4
MAX_PID = 9999
JPEG_QUALITY = 90

MAT_TRAIN_ORDER: tuple[str, ...] = (
    "age", "backpack", "bag", "handbag",
    "downblack", "downblue", "downbrown", "downgray", "downgreen", "downpink", "downpurple",
    "downwhite", "downyellow",
    "upblack", "upblue", "upgreen", "upgray", "uppurple", "upred", "upwhite", "upyellow",
    "clothes", "down", "up", "hair", "hat", "gender", "image_index",
)
"""Field order of ``market_attribute.train`` in the real Market-1501_Attribute file."""

MAT_TEST_ORDER: tuple[str, ...] = (
    "age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender",
    "upblack", "upwhite", "upred", "uppurple", "upyellow", "upgray", "upblue", "upgreen",
    "downblack", "downwhite", "downpink", "downpurple", "downyellow", "downgray", "downblue",
    "downgreen", "downbrown", "image_index",
)
"""Field order of ``market_attribute.test`` in the real Market-1501_Attribute file."""

_KIND_PERSON, _KIND_DISTRACTOR, _KIND_JUNK = 0, 1, 2


@dataclass(frozen=True)
class SynthInfo:
    """What :func:`generate` wrote.

    Attributes:
        out: the output folder.
        layout: ``"market"`` or ``"course"``.
        seed: the seed used.
        train_ids: number of training identities.
        test_ids: number of test identities.
        images: folder name -> number of images written there (course duplicates included).
    """

    out: Path
    layout: str
    seed: int
    train_ids: int
    test_ids: int
    images: dict[str, int]


@dataclass(frozen=True)
class _Shot:
    """One image to write: who, where and under which name parts."""

    split: str  # train, query, gallery
    pid: int
    camid: int
    seq: int
    frame: int
    box: int
    kind: int
    key: int  # index of the image among its identity's (or kind's) images


@dataclass(frozen=True)
class _Plan:
    """All identities and images of one dataset."""

    train_ids: tuple[int, ...]
    test_ids: tuple[int, ...]
    shots: tuple[_Shot, ...]


# ---------------------------------------------------------------- the plan


def _choose_ids(rng: np.random.Generator, ids: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Distinct non-contiguous person ids, half (rounded down) for training."""
    pool = max(1501, ids)
    chosen = rng.choice(np.arange(1, pool + 1), size=ids, replace=False)
    n_train = ids // 2
    return tuple(sorted(int(p) for p in chosen[:n_train])), tuple(
        sorted(int(p) for p in chosen[n_train:]))


def _track(rng: np.random.Generator) -> tuple[int, int, int]:
    """Sequence, first frame and frame step of one pass in front of a camera."""
    return int(rng.integers(1, 7)), int(rng.integers(50, 180000)), int(rng.integers(5, 40))


def _train_shots(seed: int, pid: int) -> list[_Shot]:
    """12-20 images of a training identity on 2-6 cameras (at least 2 per camera)."""
    rng = _rng(seed, _P_PLAN, pid)
    cams = np.sort(rng.choice(np.arange(1, NUM_CAMERAS + 1), size=int(rng.integers(2, 7)),
                              replace=False))
    counts = np.full(len(cams), 2)
    total = int(rng.integers(12, 21))
    extra = rng.multinomial(total - counts.sum(), np.ones(len(cams)) / len(cams))
    shots: list[_Shot] = []
    for cam, n in zip(cams, counts + extra):
        seq, start, step = _track(rng)
        for k in range(int(n)):
            shots.append(_Shot("train", pid, int(cam), seq, start + k * step, 1, _KIND_PERSON,
                               len(shots)))
    return shots


def _test_shots(seed: int, pid: int) -> list[_Shot]:
    """One query per camera (2-6 cameras) and 2-4 gallery images on each of those cameras."""
    rng = _rng(seed, _P_PLAN, pid)
    cams = np.sort(rng.choice(np.arange(1, NUM_CAMERAS + 1), size=int(rng.integers(2, 7)),
                              replace=False))
    shots: list[_Shot] = []
    for cam in cams:
        seq, start, step = _track(rng)
        n = int(rng.integers(2, 5))
        for k in range(n + 1):
            split, box = ("query", 0) if k == n // 2 else ("gallery", 1 + (k > n // 2))
            shots.append(_Shot(split, pid, int(cam), seq, start + k * step, box, _KIND_PERSON,
                               len(shots)))
    return shots


def _extra_shots(seed: int, kind: int, count: int) -> list[_Shot]:
    """Gallery distractors (pid 0) or junk (pid -1) with distinct names."""
    rng = _rng(seed, _P_PLAN, 100000 + kind)
    pid = DISTRACTOR_ID if kind == _KIND_DISTRACTOR else JUNK_ID
    seen: set[tuple[int, int, int, int]] = set()
    shots: list[_Shot] = []
    while len(shots) < count:
        cam, seq = int(rng.integers(1, 7)), int(rng.integers(1, 7))
        frame, box = int(rng.integers(50, 180000)), int(rng.integers(1, 9))
        if (cam, seq, frame, box) not in seen:
            seen.add((cam, seq, frame, box))
            shots.append(_Shot("gallery", pid, cam, seq, frame, box, kind, len(shots)))
    return shots


def _make_plan(ids: int, seed: int) -> _Plan:
    """Identities and the images to draw; depends only on ``ids`` and ``seed``."""
    train_ids, test_ids = _choose_ids(_rng(seed, _P_PLAN), ids)
    shots = [s for pid in train_ids for s in _train_shots(seed, pid)]
    shots += [s for pid in test_ids for s in _test_shots(seed, pid)]
    n_true = sum(s.split == "gallery" for s in shots)
    shots += _extra_shots(seed, _KIND_DISTRACTOR, max(2, round(0.15 * n_true)))
    shots += _extra_shots(seed, _KIND_JUNK, max(2, round(0.12 * n_true)))
    return _Plan(train_ids, test_ids, tuple(shots))


def _render(renderer: _Renderer, shot: _Shot) -> bytes:
    """The JPEG bytes of one shot."""
    seed = renderer.seed
    rng = _rng(seed, _P_SHOT, shot.kind, max(shot.pid, 0), shot.key)
    if shot.kind == _KIND_PERSON:
        img = renderer.person(_person(seed, _KIND_PERSON, shot.pid), shot.camid, rng)
    elif shot.kind == _KIND_DISTRACTOR:
        img = renderer.distractor(_person(seed, shot.kind, shot.key), shot.camid, rng)
    else:
        img = renderer.junk(_person(seed, shot.kind, shot.key), shot.camid, rng)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _images(plan: _Plan, seed: int, size: tuple[int, int],
            progress: bool) -> Iterator[tuple[_Shot, bytes]]:
    """Render every shot of the plan, in plan order."""
    renderer = _Renderer(seed, size)
    shots: Iterable[_Shot] = plan.shots
    if progress:
        from rich.progress import track

        shots = track(plan.shots, description="drawing pedestrians")
    for shot in shots:
        yield shot, _render(renderer, shot)


# ---------------------------------------------------------------- writers


def _market_name(shot: _Shot) -> str:
    pid = "-1" if shot.pid == JUNK_ID else f"{shot.pid:04d}"
    return f"{pid}_c{shot.camid}s{shot.seq}_{shot.frame:06d}_{shot.box:02d}.jpg"


def _attribute_struct(seed: int, pids: Sequence[int],
                      order: Sequence[str]) -> dict[str, np.ndarray]:
    """One split of ``market_attribute``: every field shaped (1, N), in the given order."""
    raws = [tasks_to_raw(_person(seed, _KIND_PERSON, pid).labels) for pid in pids]
    struct: dict[str, np.ndarray] = {}
    for name in order:
        if name == "image_index":
            index = np.empty((1, len(pids)), dtype=object)
            index[0, :] = [f"{pid:04d}" for pid in pids]
            struct[name] = index
        else:
            struct[name] = np.array([[raw[name] for raw in raws]], dtype=np.uint8)
    return struct


def _write_mat(path: Path, plan: _Plan, seed: int) -> None:
    """``market_attribute.mat`` as in Market-1501_Attribute, with a reproducible header."""
    content = {"market_attribute": {
        "test": _attribute_struct(seed, plan.test_ids, MAT_TEST_ORDER),
        "train": _attribute_struct(seed, plan.train_ids, MAT_TRAIN_ORDER),
    }}
    buf = io.BytesIO()
    scipy.io.savemat(buf, content, format="5")
    data = bytearray(buf.getvalue())
    header = f"MATLAB 5.0 MAT-file, synthetic attreid data, seed {seed}".encode("ascii")
    data[:116] = header.ljust(116, b" ")  # scipy writes the creation time here
    path.write_bytes(bytes(data))


def _write_market(out: Path, plan: _Plan, seed: int, size: tuple[int, int],
                  progress: bool) -> dict[str, int]:
    folders = {"train": "bounding_box_train", "gallery": "bounding_box_test", "query": "query"}
    counts = {name: 0 for name in folders.values()}
    for name in folders.values():
        (out / name).mkdir(parents=True)
    for shot, data in _images(plan, seed, size, progress):
        folder = folders[shot.split]
        (out / folder / _market_name(shot)).write_bytes(data)
        counts[folder] += 1
    _write_mat(out / "market_attribute.mat", plan, seed)
    return counts


def _course_train_name(shot: _Shot) -> str:
    return f"{shot.pid:04d}_c{shot.camid}_{shot.frame:06d}{shot.seq}{shot.box:02d}.jpg"


def _course_names(plan: _Plan, seed: int) -> dict[_Shot, str]:
    """File names of every shot; test and query files numbered in a shuffled order."""
    rng = _rng(seed, _P_ORDER)
    names = {s: _course_train_name(s) for s in plan.shots if s.split == "train"}
    for split in ("gallery", "query"):
        shots = [s for s in plan.shots if s.split == split]
        for number, i in enumerate(rng.permutation(len(shots))):
            names[shots[int(i)]] = f"{number:06d}.jpg"
    return names


def _write_annotations(path: Path, plan: _Plan, seed: int) -> None:
    """``annotations_train.csv``: one row per training identity, shuffled, id unpadded."""
    order = _rng(seed, _P_ORDER, 1).permutation(len(plan.train_ids))
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for i in order:
            pid = plan.train_ids[int(i)]
            raw = tasks_to_raw(_person(seed, _KIND_PERSON, pid).labels)
            writer.writerow([pid] + [raw[name] for name in RAW_ATTRIBUTES])


def _write_course(out: Path, plan: _Plan, seed: int, size: tuple[int, int],
                  progress: bool) -> dict[str, int]:
    folders = {"train": "train", "gallery": "test", "query": "queries"}
    counts = {name: 0 for name in folders.values()}
    for name in folders.values():
        (out / name).mkdir(parents=True)
    names = _course_names(plan, seed)
    truth: list[tuple[str, str, int, int]] = []
    for shot, data in _images(plan, seed, size, progress):
        folder = folders[shot.split]
        (out / folder / names[shot]).write_bytes(data)
        counts[folder] += 1
        if folder != "train":
            truth.append((folder, names[shot], shot.pid, shot.camid))
    truth += _write_duplicates(out / "test", truth, seed)
    counts["test"] += 2
    _write_annotations(out / "annotations_train.csv", plan, seed)
    _write_truth(out / "synth_truth.csv", truth)
    return counts


def _write_duplicates(folder: Path, truth: Sequence[tuple[str, str, int, int]],
                      seed: int) -> list[tuple[str, str, int, int]]:
    """Two byte-identical copies ``NNNNNN(1).jpg`` in test/, as the real release has."""
    rows = sorted(r for r in truth if r[0] == "test")
    picks = _rng(seed, _P_ORDER, 2).choice(len(rows), size=2, replace=False)
    added = []
    for i in sorted(int(p) for p in picks):
        split, name, pid, camid = rows[i]
        copy = name.replace(".jpg", "(1).jpg")
        shutil.copyfile(folder / name, folder / copy)
        added.append((split, copy, pid, camid))
    return added


def _write_truth(path: Path, rows: Sequence[tuple[str, str, int, int]]) -> None:
    """``synth_truth.csv``: split (test/queries), file, pid (0 distractor, -1 junk), camid."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["split", "file", "pid", "camid"])
        writer.writerows(sorted(rows))


_WRITERS = {"market": _write_market, "course": _write_course}


def _write_readme(out: Path, info: SynthInfo) -> None:
    lines = [
        "SYNTHETIC pedestrian data made by attreid.data.synth (not real people, not Market-1501).",
        f"layout: {info.layout}",
        f"seed: {info.seed}",
        f"identities: {info.train_ids} train, {info.test_ids} test",
        "images: " + ", ".join(f"{k} {v}" for k, v in info.images.items()),
        "Same seed and arguments give byte-identical files.",
    ]
    if info.layout == "course":
        lines.append("synth_truth.csv gives pid (0 distractor, -1 junk) and camera of test/ and "
                     "queries/ files.")
    (out / "README.txt").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- entry point


def _check_args(out: Path, ids: int, seed: int, layout: str, height: int, width: int) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")
    if not isinstance(ids, int) or not MIN_IDS <= ids <= MAX_PID:
        raise ValueError(f"ids must be an integer in {MIN_IDS}..{MAX_PID}, got {ids!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not (isinstance(height, int) and isinstance(width, int)) or min(height, width) < 16:
        raise ValueError(f"height and width must be integers >= 16, got {height}x{width}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output {out} exists and is not an empty folder; give a new path")


def generate(out: Path | str, ids: int = 100, seed: int = 0, layout: str = "market",
             height: int = 128, width: int = 64, progress: bool = False) -> SynthInfo:
    """Write a synthetic pedestrian dataset.

    Args:
        out: a new (or empty) output folder.
        ids: number of identities (>= 4); ``ids // 2`` train, the rest test.
        seed: makes everything reproducible (same seed -> byte-identical files).
        layout: ``"market"`` (Market-1501 release + ``market_attribute.mat``) or ``"course"``
            (train/, test/, queries/, ``annotations_train.csv`` and ``synth_truth.csv``).
        height, width: image size in pixels (Market-1501: 128 x 64).
        progress: show a progress bar.

    Returns:
        what was written, see :class:`SynthInfo`.
    """
    out = Path(out)
    _check_args(out, ids, seed, layout, height, width)
    plan = _make_plan(ids, seed)
    out.mkdir(parents=True, exist_ok=True)
    counts = _WRITERS[layout](out, plan, seed, (width, height), progress)
    info = SynthInfo(out, layout, seed, len(plan.train_ids), len(plan.test_ids), counts)
    _write_readme(out, info)
    return info
