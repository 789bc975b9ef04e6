"""Builders of tiny hand-made datasets for reader tests (independent of the synthetic generator)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import scipy.io
from PIL import Image

from attreid.schema import CSV_COLUMNS, RAW_ATTRIBUTES, tasks_to_raw

TRAIN_ORDER = (
    "age backpack bag handbag downblack downblue downbrown downgray downgreen downpink downpurple "
    "downwhite downyellow upblack upblue upgreen upgray uppurple upred upwhite upyellow clothes "
    "down up hair hat gender"
).split()


def write_jpeg(path: Path, colour: tuple[int, int, int] = (120, 30, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 128), colour).save(path, quality=90)
    return path


def labels_for(pid: int) -> list[int]:
    """Deterministic 12 task labels for an identity."""
    rng = np.random.default_rng(pid)
    sizes = (4, 2, 2, 2, 2, 2, 2, 2, 2, 2, 9, 10)
    return [int(rng.integers(n)) for n in sizes]


def write_market_mat(path: Path, train_ids: Iterable[int], test_ids: Iterable[int],
                     overrides: dict[int, dict[str, int]] | None = None,
                     drop_field: str | None = None) -> None:
    overrides = overrides or {}

    def struct(ids: list[int], order: list[str]) -> dict:
        raws = [{**tasks_to_raw(labels_for(p)), **overrides.get(p, {})} for p in ids]
        out = {n: np.array([[r[n] for r in raws]], dtype=np.uint8) for n in order
               if n != drop_field}
        index = np.empty((1, len(ids)), dtype=object)
        for i, p in enumerate(ids):
            index[0, i] = f"{p:04d}"
        out["image_index"] = index
        return out

    scipy.io.savemat(str(path), {"market_attribute": {
        "test": struct(sorted(test_ids), list(RAW_ATTRIBUTES)),
        "train": struct(sorted(train_ids), TRAIN_ORDER),
    }})


def make_market(root: Path, train_ids=(2, 7, 10), test_ids=(1, 3)) -> Path:
    """A tiny valid Market-1501 layout: 2 images per train id, query+gallery per test id."""
    for pid in train_ids:
        for cam in (1, 2):
            write_jpeg(root / "bounding_box_train" / f"{pid:04d}_c{cam}s1_000{pid:03d}_01.jpg")
    for pid in test_ids:
        write_jpeg(root / "query" / f"{pid:04d}_c1s1_000100_00.jpg")
        write_jpeg(root / "bounding_box_test" / f"{pid:04d}_c2s1_000200_01.jpg")
    write_jpeg(root / "bounding_box_test" / "0000_c3s1_000300_01.jpg")
    write_jpeg(root / "bounding_box_test" / "-1_c3s1_000300_02.jpg")
    write_market_mat(root / "market_attribute.mat", train_ids, test_ids)
    return root


def write_course_csv(path: Path, ids: Iterable[int], columns=CSV_COLUMNS,
                     overrides: dict[int, dict[str, str]] | None = None) -> None:
    overrides = overrides or {}
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for pid in ids:
            row = {"id": str(pid), **{k: str(v) for k, v in tasks_to_raw(labels_for(pid)).items()},
                   **overrides.get(pid, {})}
            w.writerow([row.get(c, "1") for c in columns])


def make_course(root: Path, ids=(474, 857, 2, 3)) -> Path:
    """A tiny valid course layout with one byte-identical duplicate in test/."""
    root.mkdir(parents=True, exist_ok=True)
    write_course_csv(root / "annotations_train.csv", ids)
    for pid in ids:
        for cam in (1, 3):
            write_jpeg(root / "train" / f"{pid:04d}_c{cam}_0{pid:08d}.jpg")
    for i in range(3):
        write_jpeg(root / "test" / f"{i:06d}.jpg", (i * 40, 10, 10))
        write_jpeg(root / "queries" / f"{i:06d}.jpg", (10, i * 40, 10))
    (root / "test" / "000001(1).jpg").write_bytes((root / "test" / "000001.jpg").read_bytes())
    return root


def make_custom_copy(src: Path, out: Path, columns: Sequence[str] = ()) -> Path:
    """A custom-layout (``labels.csv``) copy of the synthetic Market-1501 dataset ``src`` with
    only ``columns`` of attributes (gender 1/2 by identity parity, age 1-4 by identity) beside
    image, pid, camid, split; distractors and junk get empty attribute cells."""
    rows = []
    for split, folder, dst in (("train", "bounding_box_train", "trn"), ("query", "query", "qry"),
                               ("gallery", "bounding_box_test", "gal")):
        (out / dst).mkdir(parents=True)
        for path in sorted((src / folder).glob("*.jpg")):
            pid, cam = int(path.name.split("_")[0]), int(path.name.split("_")[1][1])
            shutil.copy(path, out / dst / path.name)
            row = {"image": f"{dst}/{path.name}", "pid": pid, "camid": cam, "split": split}
            for c in columns:
                row[c] = "" if pid <= 0 else (pid % 2 + 1 if c == "gender" else pid % 4 + 1)
            rows.append(row)
    with open(out / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "pid", "camid", "split", *columns])
        writer.writeheader()
        writer.writerows(rows)
    return out


def run_cli_ok(args: Sequence[str]) -> None:
    """``attreid ARGS`` in this process (the console entry point's error handling included);
    fails the test unless it exits 0."""
    from attreid import cli

    try:
        cli.run(list(args))
    except SystemExit as exc:
        assert exc.code in (0, None), args


def assert_nearest_within(order: Sequence[int], dist: np.ndarray, tol: float) -> None:
    """``order`` (k distinct indices) ranks the k nearest of ``dist`` (N,) up to near-ties:
    the i-th listed entry's distance is within ``tol`` of the i-th smallest distance. Two
    computations of the same ranking (FAISS vs torch, ONNX vs torch, another CPU's rounding)
    may order entries closer than ``tol`` either way; a wrong entry or order beyond ``tol``
    fails."""
    order = [int(i) for i in order]
    assert len(set(order)) == len(order), order
    dist = np.asarray(dist, dtype=np.float64)
    nearest = np.sort(dist)[:len(order)]
    np.testing.assert_allclose(dist[order], nearest, rtol=0, atol=tol)


def brute_force_distance(query: np.ndarray, gallery: np.ndarray, metric: str) -> np.ndarray:
    """(Q, G) float64 distances written out independently of attreid.metrics: ``euclidean``,
    ``squared`` (squared Euclidean) or ``cosine`` (1 - dot of unit vectors)."""
    q, g = query.astype(np.float64), gallery.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        return 1.0 - q @ g.T
    squared = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    if metric == "squared":
        return squared
    assert metric == "euclidean", metric
    return np.sqrt(squared)
