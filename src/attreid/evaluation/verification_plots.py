"""Figures of a calibration: the ROC curve on a log FAR axis, the genuine and impostor distance
histograms with the thresholds marked, and the reliability diagram. Arrays in, a PNG written
atomically (matplotlib's object API on the Agg canvas, as :mod:`attreid.evaluation.plots`)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
from matplotlib.figure import Figure

from attreid.evaluation.plots import save_figure
from attreid.metrics.verification import PairDistances, roc_curve


def plot_roc(curves: Mapping[str, PairDistances], thresholds: Mapping[str, float],
             path: Path | str, title: str = "ROC") -> Path:
    """TAR against FAR (log axis) for each set of pairs; the operating points' FARs marked.

    Args:
        curves: label -> the pairs of a set (e.g. "calibration", "held out").
        thresholds: FAR key (``"1e-03"``) -> distance; only the keys are used, as FARs.
    """
    fig = Figure(figsize=(6, 4.5))
    ax = fig.add_subplot()
    for label, pairs in curves.items():
        fars, tars = roc_curve(pairs)
        ax.plot(fars, tars, label=label)
    for key in thresholds:
        ax.axvline(float(key), color="grey", linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set(xlabel="false accept rate (FAR)", ylabel="true accept rate (TAR)", title=title,
           ylim=(0, 1))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_distance_histograms(pairs: PairDistances, thresholds: Mapping[str, float],
                             eer_threshold: float, path: Path | str,
                             title: str = "Pair distances") -> Path:
    """Densities of genuine and impostor (sampled) distances, each threshold a vertical line."""
    fig = Figure(figsize=(7, 5))
    ax = fig.add_subplot()
    both = np.concatenate([pairs.genuine, pairs.impostor_sample])
    bins = np.linspace(both.min(), both.max(), 80)
    ax.hist(pairs.impostor_sample, bins=bins, density=True, alpha=0.5, color="tab:red",
            label=f"impostor ({pairs.num_impostor:,} pairs, {len(pairs.impostor_sample):,} "
                  "drawn)")
    ax.hist(pairs.genuine, bins=bins, density=True, alpha=0.5, color="tab:green",
            label=f"genuine ({len(pairs.genuine):,} pairs)")
    for key, t in sorted(thresholds.items(), key=lambda kv: float(kv[0])):
        ax.axvline(t, color="black", linestyle="--", linewidth=1)
        ax.text(t, ax.get_ylim()[1] * 0.95, f" FAR {float(key):g}", rotation=90, va="top",
                fontsize=8)
    ax.axvline(eer_threshold, color="tab:blue", linestyle=":", linewidth=1, label="EER")
    ax.set(xlabel="distance", ylabel="density", title=title)
    # below the axes: inside, it covered the thresholds' labels
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8,
              frameon=False)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_reliability(predicted: np.ndarray, observed: np.ndarray, mass: np.ndarray, ece: float,
                     path: Path | str, title: str = "Reliability") -> Path:
    """Observed genuine fraction against mean predicted probability per bin (the diagonal is
    perfect calibration); bar heights below show each bin's share of the pairs."""
    fig = Figure(figsize=(5, 5.5))
    ax, share = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    used = mass > 0
    ax.plot(predicted[used], observed[used], marker="o")
    ax.set(ylabel="observed fraction of genuine pairs", title=f"{title} (ECE {ece:.3f})",
           xlim=(0, 1), ylim=(0, 1))
    width = 1.0 / len(mass)
    share.bar((np.arange(len(mass)) + 0.5) * width, mass, width=width * 0.9)
    share.set(xlabel="predicted P(same person)", ylabel="share")
    fig.tight_layout()
    return save_figure(fig, path)
