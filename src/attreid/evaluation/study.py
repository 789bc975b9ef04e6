"""The study's published validation results, the reference that ``attreid compare`` sets runs
against.

Source: the results table of the original study that attreid reproduces (the course project
behind the ``seed`` preset and the course layout), transcribed as published, in percent.
Setup: ResNet-18 with ImageNet weights and the study's strides, 128x64 input, 50 epochs, course
layout; validation on the identities of the first 225 rows of ``annotations_train.csv``
(training on the other 526), attribute accuracy per task, and mAP with every validation image
ranked against all others without camera filtering (``data.split=study``, protocol ``seed``).
``majority`` predicts each task's most frequent training class. The study reports no rank-1.
"""

from __future__ import annotations

from typing import Any

COLUMNS: tuple[str, ...] = ("resnet", "convhead", "attention", "majority")
"""The published columns: the three model variants and the majority baseline."""

_ROWS: dict[str, tuple[float | None, ...]] = {  # percent, in the order of COLUMNS
    "age": (78.63, 83.09, 74.50, 78.61),
    "backpack": (81.83, 82.86, 75.98, 76.16),
    "bag": (73.97, 70.08, 75.36, 73.35),
    "handbag": (90.47, 90.19, 90.38, 88.28),
    "clothes": (89.47, 92.10, 92.36, 85.43),
    "down": (89.26, 87.08, 85.86, 63.68),
    "up": (93.94, 93.62, 93.10, 94.13),
    "hair": (84.10, 84.03, 84.12, 64.32),
    "hat": (96.35, 96.47, 96.51, 96.81),
    "gender": (87.80, 89.37, 82.14, 55.42),
    "upcolor": (69.96, 69.25, 65.74, 27.16),
    "downcolor": (66.14, 64.30, 62.89, 45.52),
    "mean": (83.49, 83.53, 81.58, 70.70),
    "mAP": (67.86, 69.93, 62.93, None),
}

PUBLISHED: dict[str, dict[str, float | None]] = {
    column: {row: values[i] for row, values in _ROWS.items()}
    for i, column in enumerate(COLUMNS)
}
"""Column (variant or ``majority``) -> row (task name, ``mean``, ``mAP``) -> percent or None."""

SETUP: dict[str, Any] = {
    "backbone": "resnet18", "weights": "imagenet", "input": "128x64", "epochs": 50,
    "split": "study", "protocol": "seed", "distance": "euclidean",
}
"""The study's setup in attreid's terms (``model.backbone``, ``model.weights``, ``data.height``
x ``data.width``, ``optim.epochs``, ``data.split``, evaluation protocol, ``loss.distance``)."""

DESCRIPTION = ("ImageNet ResNet-18, 128x64, 50 epochs, course layout; validation on the first 225 "
               "CSV identities, mAP all-vs-all without camera filter")
"""One line saying what the published numbers are."""


def published(column: str, row: str) -> float | None:
    """The study's number (percent) for ``column`` and ``row``; None where it has none
    (an unknown variant, rank-1, the majority's mAP)."""
    return PUBLISHED.get(column, {}).get(row)
