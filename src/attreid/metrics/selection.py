"""Checkpoint selection: one number per validation record, higher is better (``best.pt``)."""

from __future__ import annotations

from typing import Any


def selection_score(metrics: dict[str, Any]) -> float:
    """Checkpoint selection, by training (``best.pt``) and here: the mean of mAP and the mean
    attribute accuracy (mAP alone when no validation image has attributes)."""
    if not isinstance(metrics.get("mean_accuracy"), (int, float)):
        return metrics["mAP"]
    return (metrics["mAP"] + metrics["mean_accuracy"]) / 2
