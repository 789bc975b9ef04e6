"""Evaluation figures: CMC curves, attribute accuracy against the majority baseline, and ranked
galleries. Pure functions: arrays in, a PNG written atomically, its path out.

Figures are drawn with matplotlib's object API on the Agg canvas (no ``pyplot``, so importing this
module changes no global backend or state).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from PIL import Image, ImageOps

from attreid.data.io import read_image
from attreid.utils.files import atomic_write_bytes

DPI = 100
"""Resolution of every figure (pixels per inch)."""

CROP_SIZE = (64, 128)
"""(width, height) each crop of :func:`plot_ranked_gallery` is resized to."""

_MATCH, _MISMATCH, _QUERY = (0, 170, 0), (220, 0, 0), (60, 60, 60)


def save_figure(fig: Figure, path: Path | str) -> Path:
    """Render ``fig`` to PNG and write it atomically; returns the path."""
    path = Path(path)
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def plot_cmc(curves: Mapping[str, Sequence[float] | np.ndarray], path: Path | str,
             max_rank: int = 50, title: str = "CMC") -> Path:
    """CMC curves, one line per entry (e.g. plain and re-ranked), ranks 1..``max_rank``.

    Args:
        curves: label -> (L,) matching rate at ranks 1..L, fractions in [0, 1].
        path: the PNG to write.
    """
    if not curves:
        raise ValueError("curves: expected at least one CMC curve")
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    ax = fig.add_subplot()
    lowest = 1.0
    for label, curve in curves.items():
        values = np.asarray(curve, dtype=np.float64)[:max_rank]  # (L,)
        if values.ndim != 1 or len(values) == 0:
            raise ValueError(f"curves[{label!r}]: expected a non-empty 1-d array")
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        lowest = min(lowest, float(np.nanmin(values)))
    bottom = max(0.0, math.floor(lowest * 10 - 0.5) / 10)  # a round tenth below the curves
    ax.set(xlabel="rank", ylabel="matching rate", title=title, xlim=(0.5, max_rank + 0.5),
           ylim=(bottom, 1.0 + 0.02 * (1.0 - bottom)))
    ax.set_yticks([t for t in ax.get_yticks() if bottom <= t <= 1.0 + 1e-9])  # none above 100%
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return save_figure(fig, path)


def _finite(value: float | None) -> bool:
    return value is not None and not math.isnan(value)


def plot_attribute_accuracy(accuracy: Mapping[str, float | None],
                            majority: Mapping[str, float | None], path: Path | str,
                            title: str = "Attribute accuracy") -> Path:
    """Horizontal grouped bars per task: the model's accuracy beside the majority baseline.

    Args:
        accuracy: task -> accuracy (fraction; None/NaN drawn as "n/a"), in display order.
        majority: task -> majority-baseline accuracy for the same tasks.
        path: the PNG to write.
    """
    tasks = list(accuracy)
    if not tasks:
        raise ValueError("accuracy: expected at least one task")
    fig = Figure(figsize=(7.0, 0.45 * len(tasks) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(tasks))
    height = 0.38
    for offset, values, label, colour in ((-height / 2, accuracy, "model", "tab:blue"),
                                          (height / 2, majority, "majority (train)",
                                           "tab:gray")):
        shown = [values.get(t) for t in tasks]
        widths = [v if _finite(v) else 0.0 for v in shown]
        ax.barh(y + offset, widths, height=height, label=label, color=colour)
        for yi, v in zip(y + offset, shown):
            text = f"{100 * v:.1f}" if _finite(v) else "n/a"
            ax.text((v if _finite(v) else 0.0) + 0.01, yi, text, va="center", fontsize=8)
    ax.set_yticks(y, tasks)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1.12), xlabel="accuracy", title=title)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=2, fontsize=9)  # never over a bar
    return save_figure(fig, path)


def _crop(path: Path | str, colour: tuple[int, int, int], border: int = 4) -> np.ndarray:
    """The image at ``path`` resized to :data:`CROP_SIZE` with a coloured border: (H, W, 3)."""
    image = read_image(path).resize(CROP_SIZE, Image.Resampling.BILINEAR)
    return np.asarray(ImageOps.expand(image, border=border, fill=colour))


def _show(ax, image: np.ndarray, top: str | None, bottom: str | None) -> None:
    ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if top:
        ax.set_title(top, fontsize=9)
    if bottom:
        ax.set_xlabel(bottom, fontsize=8)


def plot_ranked_gallery(query_paths: Sequence[Path | str],
                        ranked_gallery_paths: Sequence[Sequence[Path | str]],
                        correct: np.ndarray, path: Path | str,
                        distances: np.ndarray | None = None,
                        title: str = "Ranked gallery") -> Path:
    """A grid: each row one query, then its top-k gallery images in ranking order.

    Gallery crops get a green border when they show the query's identity, a red one otherwise;
    the caption under each is its distance. Exclude protocol-removed entries (junk, same camera)
    from the rankings before calling.

    Args:
        query_paths: V query image files.
        ranked_gallery_paths: (V, k) gallery image files, best first.
        correct: (V, k) bool, True where the gallery image has the query's identity.
        path: the PNG to write.
        distances: optional (V, k) distances shown under the crops.
    """
    correct = np.asarray(correct, dtype=bool)
    v = len(query_paths)
    if v == 0 or correct.ndim != 2 or correct.shape[0] != v or correct.shape[1] == 0:
        raise ValueError(f"correct: expected shape (V, k) with V = {v} queries and k >= 1, "
                         f"got {correct.shape}")
    k = correct.shape[1]
    if [len(row) for row in ranked_gallery_paths] != [k] * v:
        raise ValueError(f"ranked_gallery_paths: expected {v} rows of {k} paths")
    if distances is not None and np.shape(distances) != (v, k):
        raise ValueError(f"distances: expected shape {(v, k)}, got {np.shape(distances)}")
    fig = Figure(figsize=(0.85 * (k + 1.3), 1.75 * v + 0.7), layout="constrained")
    fig.suptitle(f"{title}\n(green: same identity, red: different identity; "
                 "caption: distance)", fontsize=10)
    grid = fig.add_gridspec(v, k + 2, width_ratios=[1, 0.3] + [1] * k)
    for i in range(v):
        _show(fig.add_subplot(grid[i, 0]), _crop(query_paths[i], _QUERY),
              "query" if i == 0 else None, None)
        for j in range(k):
            colour = _MATCH if correct[i, j] else _MISMATCH
            caption = None if distances is None else f"{float(distances[i][j]):.3g}"
            _show(fig.add_subplot(grid[i, j + 2]), _crop(ranked_gallery_paths[i][j], colour),
                  f"{j + 1}" if i == 0 else None, caption)
    return save_figure(fig, path)


CURVE_PANELS: tuple[tuple[str, str, str], ...] = (
    ("train", "loss", "training loss"),
    ("val", "mAP", "validation mAP"),
    ("val", "mean_accuracy", "validation mean attribute accuracy"),
)
"""(record part, key, title) of each panel of :func:`plot_training_curves`."""


def plot_training_curves(runs: Mapping[str, Sequence[Mapping]], path: Path | str) -> Path:
    """Loss, mAP and mean attribute accuracy per epoch, one line per run.

    Args:
        runs: label -> the run's ``metrics.jsonl`` records (``epoch``, ``train``, and ``val``
            on validated epochs); a record without a value is skipped in that panel.
        path: the PNG to write.
    """
    if not runs:
        raise ValueError("runs: expected at least one training run")
    fig = Figure(figsize=(13.5, 4.0), layout="constrained")
    axes = fig.subplots(1, len(CURVE_PANELS))
    for ax, (part, key, title) in zip(axes, CURVE_PANELS):
        for label, records in runs.items():
            points = [(r["epoch"], r[part][key]) for r in records
                      if _finite((r.get(part) or {}).get(key))]
            if points:
                epochs, values = zip(*points)
                ax.plot(epochs, values, marker="o", markersize=3, label=label)
        ax.set(xlabel="epoch", title=title)
        if part == "val":
            ax.yaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
    axes[0].legend(loc="best")
    return save_figure(fig, path)
