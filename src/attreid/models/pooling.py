"""Global pooling of the last feature map: average, or generalized mean (GeM).

GeM (Radenović, Tolias and Chum, "Fine-tuning CNN Image Retrieval with No Human Annotation",
TPAMI 2018) pools ``(mean over H, W of x^p)^(1/p)`` with one learnable exponent ``p``: ``p = 1``
is average pooling, ``p -> inf`` max pooling. Re-ID baselines (fast-reid's strong baselines,
AGW by Ye et al. 2021) report it a little above average pooling.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOLINGS = ("avg", "gem")
"""Names accepted by :func:`build_pool`."""

GEM_P = 3.0
"""The initial GeM exponent (the value Radenović et al. and AGW start from)."""

GEM_EPS = 1e-6
"""Inputs are clamped to at least this before ``x^p`` (post-ReLU maps hold exact zeros)."""


class AvgPool(nn.Module):
    """(B, C, H, W) -> (B, C) global average pooling; no parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


class GeM(nn.Module):
    """(B, C, H, W) -> (B, C) generalized-mean pooling with one learnable exponent ``p``.

    Attributes:
        p: the exponent, a scalar parameter (initialised to :data:`GEM_P`), trained with the net.
    """

    def __init__(self, p: float = GEM_P) -> None:
        super().__init__()
        if p <= 0:
            raise ValueError(f"the GeM exponent must be > 0, got {p}")
        self.p = nn.Parameter(torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x.clamp(min=GEM_EPS).pow(self.p), 1)
        return torch.flatten(pooled.pow(1.0 / self.p), 1)


def build_pool(name: str) -> nn.Module:
    """The pooling module called ``name`` (one of :data:`POOLINGS`).

    Raises:
        ValueError: an unknown name, listing the valid ones.
    """
    if name == "avg":
        return AvgPool()
    if name == "gem":
        return GeM()
    raise ValueError(f"unknown pooling {name!r}; valid poolings: {list(POOLINGS)}")
