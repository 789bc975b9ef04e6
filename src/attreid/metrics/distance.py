"""Distances between embeddings: Euclidean, squared Euclidean and cosine (the three a checkpoint
may be trained and ranked with)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attreid.metrics.inputs import ArrayLike, to_tensor

DISTANCE_METRICS: tuple[str, ...] = ("euclidean", "squared", "cosine")
"""Valid values of ``pairwise_distance(metric=...)``."""

EXACT_BELOW = 1e-2
"""Pairs whose expanded squared distance is below this fraction of ``||a||² + ||b||²`` (for
cosine: whose distance is below it) are recomputed in float64 from ``a - b``. The expansion
``||a||² + ||b||² - 2 a·b`` loses about ``eps * (||a||² + ||b||²)`` to cancellation: a crop
against itself came out at 3e-4 instead of 0 (float32, unit vectors). Beyond the cut the
rounding is at most ~1e-5 of the squared distance; few pairs fall below it, so the recompute
is cheap."""

_EXACT_CHUNK = 65_536
"""Pairs recomputed at a time (bounds the (pairs, D) difference held in memory)."""


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
        query set can be processed in chunks of rows and the chunks concatenated. Small
        distances (see :data:`EXACT_BELOW`) are computed exactly, in float64 from ``a - b``
        and rounded once: a row against itself is exactly 0.
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
        ua, ub = F.normalize(ta, dim=1), F.normalize(tb, dim=1)
        cos = 1.0 - ua @ ub.T  # (N, M)
        return _exact_small(cos, ua, ub, cos < EXACT_BELOW, half=True)
    norms = (ta * ta).sum(1, keepdim=True) + (tb * tb).sum(1)[None, :]  # (N, M)
    squared = torch.addmm(norms, ta, tb.T, alpha=-2.0).clamp_(min=0.0)  # one pass fewer
    small = squared < EXACT_BELOW * norms
    squared = _exact_small(squared, ta, tb, small)
    return squared if metric == "squared" else squared.sqrt_()


def _exact_small(dist: torch.Tensor, a: torch.Tensor, b: torch.Tensor, small: torch.Tensor,
                 half: bool = False) -> torch.Tensor:
    """``dist`` (N, M) with the ``small`` entries replaced, in place, by ``||a_i - b_j||²``
    computed in float64 (halved when ``half``: ``1 - cos`` of unit rows)."""
    rows, cols = small.nonzero(as_tuple=True)
    for start in range(0, len(rows), _EXACT_CHUNK):
        r, c = rows[start:start + _EXACT_CHUNK], cols[start:start + _EXACT_CHUNK]
        diff = a[r].double() - b[c].double()  # (P, D)
        exact = (diff * diff).sum(1)
        dist[r, c] = (exact / 2 if half else exact).to(dist.dtype)
    return dist


# --------------------------------------------------------------------------------------------
# Re-identification
# --------------------------------------------------------------------------------------------
