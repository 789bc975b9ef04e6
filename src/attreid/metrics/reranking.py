"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017), exact and memory-bounded.

Both functions implement the formulation used by the common re-ID evaluation code, over all
N = Q + G features (queries are neighbours too):

1. Original distance ``d(i, j)`` = squared Euclidean distance, in float64, snapped to a grid
   (a power of two, 2**-30 to 2**-29 times the largest squared feature norm; see below), then
   each row divided by its maximum: ``o(i, j) = d(i, j) / max_j' d(i, j')``. (The reference code
   divides each column by its maximum and transposes; for the symmetric ``d`` that is the same.)
2. Initial ranking of row ``i``: by ``o(i, .)``, ties -> lower index (a stable sort).
3. k-reciprocal neighbours ``R(i, k)``: the first ``k + 1`` of ``i``'s ranking whose own first
   ``k + 1`` contain ``i``.
4. Expansion: ``R*(i)`` = ``R(i, k1)`` plus, for each ``j`` in ``R(i, k1)``, ``R(j, round(k1/2))``
   when ``|R(i, k1) ∩ R(j, round(k1/2))| > 2/3 |R(j, round(k1/2))|`` (``round`` is Python's,
   half to even, like numpy's ``around`` in the reference code).
5. Weights ``V[i, x] = exp(-o(i, x))`` over ``x`` in ``R*(i)``, normalised to sum 1.
6. Local query expansion (``k2 != 1``): ``V[i]`` = mean of ``V`` over the first ``k2`` of
   ``i``'s initial ranking.
7. Jaccard distance ``J(i, j) = 1 - s / (2 - s)``, ``s = sum_x min(V[i, x], V[j, x])``.
8. Result, query rows x gallery columns: ``J * (1 - lambda) + o * lambda``.

Why the grid: ``||a||² + ||b||² - 2 a·b`` carries a few ulps of rounding noise that depends on
how the matrix product is blocked, so duplicate features (or a query against itself) would tie
or not depending on the chunk size. Snapping removes that noise (it moves a distance by at most
2**-30 of the largest squared norm), so :func:`rerank` and :func:`rerank_dense` pick the same
neighbours whatever the chunking.

:func:`rerank_dense` is the straightforward reference (several N x N matrices, Python loops);
:func:`rerank` gives the same result (the same neighbour sets; sums in another order, so
float64 rounding differences far below the float32 output's resolution) with memory
O(chunk_size * N + nnz(V)) beyond its (Q, G) output.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch

from attreid.metrics.distance import pairwise_distance
from attreid.metrics.inputs import ArrayLike, to_tensor

_GRID_BITS = 30


# --------------------------------------------------------------------------------------------
# Shared pieces
# --------------------------------------------------------------------------------------------


def _features(query_features: ArrayLike, gallery_features: ArrayLike
              ) -> tuple[torch.Tensor, int]:
    """Validated (N, D) float64 features, queries first, and Q."""
    q = to_tensor(query_features, "query_features")
    g = to_tensor(gallery_features, "gallery_features")
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"query_features, gallery_features: expected (Q, D) and (G, D) with "
                         f"the same D, got {tuple(q.shape)} and {tuple(g.shape)}")
    if q.shape[0] == 0 or g.shape[0] == 0 or q.shape[1] == 0:
        raise ValueError(f"query_features, gallery_features: empty, shapes {tuple(q.shape)} "
                         f"and {tuple(g.shape)}")
    x = torch.cat([q.to(torch.float64), g.to(device=q.device, dtype=torch.float64)])  # (N, D)
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).any(1).nonzero()[0])
        name, row = (("query_features", bad) if bad < len(q)
                     else ("gallery_features", bad - len(q)))
        raise ValueError(f"{name}: row {row} has a non-finite value (NaN or inf)")
    return x, len(q)


def _check_params(k1: int, k2: int, lambda_value: float, chunk_size: int = 1) -> None:
    for name, value in (("k1", k1), ("k2", k2), ("chunk_size", chunk_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: got {value!r}, expected an integer >= 1")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value: got {lambda_value!r}, expected a number in [0, 1]")


def _grid(x: torch.Tensor) -> float:
    """Snapping step: a power of two, 2**-30 to 2**-29 times the largest squared norm, so
    snapped distances (at most 4 times that norm) are integers below 2**32."""
    largest = float((x * x).sum(1).max())
    if largest == 0.0:
        return 1.0
    return math.ldexp(1.0, math.frexp(largest)[1] - _GRID_BITS)


def _snap(d: torch.Tensor, grid: float) -> torch.Tensor:
    """``d`` in units of ``grid``, rounded to integers, in place. Dividing by a power of two is
    exact, so ratios of snapped distances do not depend on the unit."""
    return d.div_(grid).round_()


def _distance(a: torch.Tensor, b: torch.Tensor, grid: float) -> torch.Tensor:
    """Snapped squared Euclidean distances (A, B) float64, in units of ``grid``."""
    return _snap(pairwise_distance(a, b, "squared"), grid)


def _row_max(d: torch.Tensor) -> torch.Tensor:
    """Row maxima (A,) of distances, 1 where a row is all zero (then o = 0, not NaN)."""
    m = d.amax(1)
    return torch.where(m > 0, m, torch.ones_like(m))


def _half(k1: int) -> int:
    return round(k1 / 2)


def _combine(min_sum: np.ndarray, original: np.ndarray, lambda_value: float) -> np.ndarray:
    """(1 - s / (2 - s)) * (1 - lambda) + o * lambda, float32, from s = ``min_sum`` and
    o = ``original`` (both float64 (B, G), overwritten): the same operations in both versions."""
    min_sum /= 2.0 - min_sum
    np.subtract(1.0, min_sum, out=min_sum)  # the Jaccard distance
    min_sum *= 1.0 - lambda_value
    original *= lambda_value
    min_sum += original
    return min_sum.astype(np.float32)


# --------------------------------------------------------------------------------------------
# Dense reference
# --------------------------------------------------------------------------------------------


def _k_reciprocal_dense(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    """R(i, k): the first k + 1 of row i whose own first k + 1 contain i."""
    forward = rank[i, :k + 1]  # (k + 1,)
    backward = rank[forward, :k + 1]  # (k + 1, k + 1)
    return forward[(backward == i).any(1)]


def _expanded_dense(rank: np.ndarray, i: int, k1: int) -> np.ndarray:
    """R*(i): R(i, k1) and the R(j, k1/2) of its members that mostly lie inside it, sorted."""
    base = _k_reciprocal_dense(rank, i, k1)
    parts = [base]
    for j in base:
        candidate = _k_reciprocal_dense(rank, j, _half(k1))
        if len(np.intersect1d(candidate, base)) > 2.0 / 3.0 * len(candidate):
            parts.append(candidate)
    return np.unique(np.concatenate(parts))


def rerank_dense(query_features: ArrayLike, gallery_features: ArrayLike, k1: int = 20,
                 k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """Reference k-reciprocal re-ranking with dense N x N matrices (N = Q + G).

    Clear rather than fast: O(N²) memory (several float64 N x N matrices) and Python loops over
    the N rows. Use :func:`rerank` for real sizes; it returns the same matrix.

    Args:
        query_features: (Q, D) features, numpy or torch.
        gallery_features: (G, D) features, same D.
        k1, k2, lambda_value: as in :func:`rerank`.

    Returns:
        (Q, G) float32 numpy array, the re-ranked distances (smaller = more similar).
    """
    _check_params(k1, k2, lambda_value)
    x, q = _features(query_features, gallery_features)
    x = x.cpu()
    d = _distance(x, x, _grid(x))  # (N, N)
    o = (d / _row_max(d)[:, None]).numpy()  # (N, N) normalised original distance
    del d
    rank = np.argsort(o, axis=1, kind="stable")  # (N, N)
    n = len(o)
    v = np.zeros((n, n))  # (N, N)
    for i in range(n):
        members = _expanded_dense(rank, i, k1)
        weight = np.exp(-o[i, members])
        v[i, members] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])  # (N, N)
    inverted = [np.flatnonzero(v[q:, k]) for k in range(n)]  # gallery images using feature k
    min_sum = np.zeros((q, n - q))  # (Q, G) sum_k min(V[i, k], V[j, k])
    for i in range(q):
        for k in np.flatnonzero(v[i]):
            images = inverted[k]
            min_sum[i, images] += np.minimum(v[i, k], v[q + images, k])
    return _combine(min_sum, o[:q, q:].copy(), lambda_value)


# --------------------------------------------------------------------------------------------
# Memory-bounded version
# --------------------------------------------------------------------------------------------


def _stable_smallest(o: torch.Tensor, k: int) -> torch.Tensor:
    """Column indices (B, k) of the k smallest values of each row of ``o`` (B, N), ordered by
    (value, index): the first k of a stable argsort, found with topk."""
    extra = int(k < o.shape[1])  # one more value shows a tie across the k-th place
    vals, idx = torch.topk(o, k + extra, dim=1, largest=False, sorted=True)  # (B, k + extra)
    idx = idx[:, :k]
    if extra:
        crowded = vals[:, k - 1] == vals[:, k]  # topk's pick among the tied values is arbitrary
        if crowded.any():
            rows = crowded.nonzero().squeeze(1)
            idx[rows] = torch.sort(o[rows], dim=1, stable=True).indices[:, :k]
    idx = torch.sort(idx, dim=1).values  # by index, then stably by value
    order = torch.sort(o.gather(1, idx), dim=1, stable=True).indices
    return idx.gather(1, order)


def _neighbours(x: torch.Tensor, grid: float, k: int, chunk_size: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """First k of every row's initial ranking (N, k) int64 and the row maxima (N,) float64
    (grid units), from chunks of (chunk_size, N) distances.

    Snapped distances are integers below 2**32, so dividing a row by its maximum keeps their
    order and ties (distinct values stay 2**-32 apart, far above an ulp): ranking ``d`` is
    ranking the normalised ``o``, one pass cheaper.
    """
    n = len(x)
    ranks, maxima = np.empty((n, k), dtype=np.int64), np.empty(n)
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        d = _distance(x[start:stop], x, grid)  # (B, N)
        ranks[start:stop] = _stable_smallest(d, k).cpu().numpy()
        maxima[start:stop] = _row_max(d).cpu().numpy()
    return ranks, maxima


def _indicator(cols: np.ndarray, n: int) -> sp.csr_matrix:
    """(N, N) 0/1 CSR with ones at (i, cols[i, :]), cols (N, k)."""
    rows = np.repeat(np.arange(n), cols.shape[1])
    return sp.csr_matrix((np.ones(cols.size), (rows, cols.reshape(-1))), shape=(n, n))


def _reciprocal(ranks: np.ndarray, k: int) -> sp.csr_matrix:
    """R(., k) as an (N, N) 0/1 CSR: j in the first k + 1 of i and i in the first k + 1 of j."""
    forward = _indicator(ranks[:, :k + 1], len(ranks))
    return forward.multiply(forward.T).tocsr()


def _expanded(ranks: np.ndarray, k1: int) -> sp.csr_matrix:
    """R*(.) as an (N, N) 0/1 CSR with sorted indices."""
    base, half = _reciprocal(ranks, k1), _reciprocal(ranks, _half(k1))
    half_sizes = np.diff(half.indptr)  # (N,) |R(j, k1/2)|
    overlap = base.multiply(base @ half.T).tocoo()  # (i, j in R(i)) -> |R(i) ∩ R(j, k1/2)|
    keep = overlap.data > 2.0 / 3.0 * half_sizes[overlap.col]
    accepted = sp.csr_matrix((np.ones(int(keep.sum())), (overlap.row[keep], overlap.col[keep])),
                             shape=base.shape)
    union = (base + accepted @ half).tocsr()
    union.data[:] = 1.0
    union.sort_indices()
    return union


def _pair_distance(x: torch.Tensor, rows: np.ndarray, cols: np.ndarray, grid: float,
                   block: int) -> np.ndarray:
    """Snapped squared distances (P,) float64 (grid units) between x[rows[p]] and
    x[cols[p]], by blocks."""
    norms = (x * x).sum(1)  # (N,)
    out = np.empty(len(rows))
    for start in range(0, len(rows), block):
        r = torch.from_numpy(rows[start:start + block]).to(x.device)
        c = torch.from_numpy(cols[start:start + block]).to(x.device)
        d = (norms[r] + norms[c] - 2.0 * (x[r] * x[c]).sum(1)).clamp_(min=0.0)
        out[start:start + len(r)] = _snap(d, grid).cpu().numpy()
    return out


def _weights(x: torch.Tensor, members: sp.csr_matrix, maxima: np.ndarray, grid: float,
             block: int) -> sp.csr_matrix:
    """V: exp(-o(i, x)) on the pattern of R*(i), each row normalised to sum 1."""
    rows = np.repeat(np.arange(len(maxima)), np.diff(members.indptr))
    weight = np.exp(-_pair_distance(x, rows, members.indices, grid, block) / maxima[rows])
    weight /= np.bincount(rows, weights=weight, minlength=len(maxima))[rows]
    return sp.csr_matrix((weight, members.indices, members.indptr), shape=members.shape)


def _query_expansion(v: sp.csr_matrix, ranks: np.ndarray, k2: int) -> sp.csr_matrix:
    """Row i <- mean of the rows of its first k2 initial neighbours."""
    first = ranks[:, :k2]  # (N, min(k2, N))
    average = _indicator(first, len(ranks)) / first.shape[1]
    out = (average @ v).tocsr()
    out.sort_indices()
    return out


def _row_groups(cost: np.ndarray, max_rows: int, budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges of at most max_rows rows and (unless one row alone exceeds it)
    at most ``budget`` summed cost."""
    cumulative = np.concatenate([[0], np.cumsum(cost)])
    groups, start = [], 0
    while start < len(cost):
        stop = int(np.searchsorted(cumulative, cumulative[start] + budget, side="right")) - 1
        stop = min(max(stop, start + 1), start + max_rows, len(cost))
        groups.append((start, stop))
        start = stop
    return groups


def _pair_counts(vq: sp.csr_matrix, vg: sp.csc_matrix) -> np.ndarray:
    """(B,) for each query row, the (query, gallery) pairs :func:`_min_sums` will visit."""
    q_rows = np.repeat(np.arange(vq.shape[0]), np.diff(vq.indptr))
    return np.bincount(q_rows, weights=np.diff(vg.indptr)[vq.indices], minlength=vq.shape[0])


def _min_sums(vq: sp.csr_matrix, vg: sp.csc_matrix) -> np.ndarray:
    """s[i, g] = sum_x min(vq[i, x], vg[g, x]) (B, G) through the inverted index: for each
    non-zero (i, x) of the queries, the gallery rows g with vg[g, x] != 0 (column x of CSC)."""
    b, g = vq.shape[0], vg.shape[0]
    q_rows = np.repeat(np.arange(b), np.diff(vq.indptr))  # (P,) one entry per non-zero
    counts = np.diff(vg.indptr)[vq.indices]  # (P,) gallery images sharing each feature
    offsets = np.cumsum(counts) - counts
    pos = np.arange(int(counts.sum())) + np.repeat(vg.indptr[vq.indices] - offsets, counts)
    smaller = np.minimum(np.repeat(vq.data, counts), vg.data[pos])  # (pairs,)
    flat = np.repeat(q_rows, counts) * g + vg.indices[pos]
    sums = np.bincount(flat, weights=smaller, minlength=b * g)  # int64 when there is no pair
    return sums.astype(np.float64, copy=False).reshape(b, g)


def rerank(
    query_features: ArrayLike,
    gallery_features: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 256,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) of query x gallery distances.

    The formulation is in this module's docstring; the result equals :func:`rerank_dense`'s
    without any N x N matrix (N = Q + G): neighbours come from chunks of (chunk_size, N)
    distances reduced by topk, the weights V are a sparse CSR matrix, and the Jaccard term is
    summed through an inverted index for groups of query rows. Memory beyond the (Q, G) output
    is O(chunk_size * N + nnz(V)). Features are used in float64.

    Args:
        query_features: (Q, D) features, numpy or torch.
        gallery_features: (G, D) features, same D.
        k1: neighbours for the k-reciprocal sets (k1 / 2, rounded, for the expansion).
        k2: neighbours averaged by local query expansion; 1 disables it.
        lambda_value: weight of the original distance, in [0, 1]; 0 gives the Jaccard
            distance alone, 1 the normalised original distance.
        chunk_size: rows of the N x N distance matrix computed at a time (also the most query
            rows of a Jaccard group).
        device: where distance chunks are computed (e.g. ``"cuda"``); default: the device of
            ``query_features`` (CPU for numpy). The sparse steps run on the CPU.

    Returns:
        (Q, G) float32 numpy array of re-ranked distances (smaller = more similar), ready for
        :func:`attreid.metrics.reid_metrics`.

    Raises:
        ValueError: shapes mismatch, empty or non-finite features, or a parameter out of range.
    """
    _check_params(k1, k2, lambda_value, chunk_size)
    x, q = _features(query_features, gallery_features)
    if device is not None:
        x = x.to(device)
    n, grid = len(x), _grid(x)
    ranks, maxima = _neighbours(x, grid, min(max(k1 + 1, k2), n), chunk_size)  # (N, K), (N,)
    block = max(1, chunk_size * n // x.shape[1])  # pairs x D floats ~ chunk_size x N
    v = _weights(x, _expanded(ranks, k1), maxima, grid, block)  # (N, N) sparse
    if k2 != 1:
        v = _query_expansion(v, ranks, k2)
    vg = v[q:].tocsc()  # (G, N): column x lists the gallery images using feature x
    out = np.empty((q, n - q), dtype=np.float32)  # (Q, G)
    budget = max(1, chunk_size * n // 4)  # (query, gallery) pairs a group, ~48 bytes each
    for start, stop in _row_groups(_pair_counts(v[:q], vg), chunk_size, budget):
        original = _distance(x[start:stop], x[q:], grid).div_(
            torch.from_numpy(maxima[start:stop, None]).to(x.device))  # (B, G)
        out[start:stop] = _combine(_min_sums(v[start:stop], vg), original.cpu().numpy(),
                                   lambda_value)
    return out
