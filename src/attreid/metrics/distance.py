"""Distances between embeddings: Euclidean, squared Euclidean and cosine (the three a checkpoint
may be trained and ranked with)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attreid.metrics.inputs import ArrayLike, to_tensor

DISTANCE_METRICS: tuple[str, ...] = ("euclidean", "squared", "cosine")
"""Valid values of ``pairwise_distance(metric=...)``."""


def pairwise_distance(a: ArrayLike, b: ArrayLike, metric: str = "euclidean") -> torch.Tensor:
    """Distances between the rows of ``a`` (N, D) and ``b`` (M, D) -> tensor (N, M).

    Args:
        a: (N, D) features (numpy or torch); integer inputs are converted to float32.
        b: (M, D) features, same D, moved to ``a``'s device.
        metric: ``"euclidean"`` (``sqrt(max(||a||² + ||b||² - 2 a·b, 0))``), ``"squared"``
            (the same without the square root, clamped at 0) or ``"cosine"``
            (``1 - cos(a, b)``, in [0, 2]; zero vectors have cosine 0 to everything).

    Returns:
        (N, M) float tensor on ``a``'s device. Row ``i`` depends only on ``a[i]``, so a large
        query set can be processed in chunks of rows and the chunks concatenated.
    """
    if metric not in DISTANCE_METRICS:
        raise ValueError(f"metric: got {metric!r}, expected one of {DISTANCE_METRICS}")
    ta, tb = to_tensor(a, "a"), to_tensor(b, "b")
    if ta.ndim != 2 or tb.ndim != 2 or ta.shape[1] != tb.shape[1]:
        raise ValueError(
            f"a, b: expected (N, D) and (M, D) with the same D, got {tuple(ta.shape)} "
            f"and {tuple(tb.shape)}"
        )
    if not ta.is_floating_point():
        ta = ta.float()
    tb = tb.to(device=ta.device, dtype=ta.dtype)
    if metric == "cosine":
        return 1.0 - F.normalize(ta, dim=1) @ F.normalize(tb, dim=1).T  # (N, M)
    norms = (ta * ta).sum(1, keepdim=True) + (tb * tb).sum(1)[None, :]  # (N, M)
    squared = torch.addmm(norms, ta, tb.T, alpha=-2.0).clamp_(min=0.0)  # one pass fewer
    return squared if metric == "squared" else squared.sqrt_()


# --------------------------------------------------------------------------------------------
# Re-identification
# --------------------------------------------------------------------------------------------
