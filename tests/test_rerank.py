"""Tests for attreid.metrics.reranking: the memory-bounded re-ranking against the dense reference, both
against a set-based brute force and a hand-computed case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attreid.metrics import pairwise_distance, reid_metrics
from attreid.metrics.reranking import _stable_smallest, rerank, rerank_dense


def _clustered(q: int, g: int, d: int = 16, ids: int = 8, noise: float = 0.7, seed: int = 0
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features around one centre per identity: (Q, D), (G, D) float32 and their ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, d))
    qids, gids = rng.integers(ids, size=q), rng.integers(ids, size=g)

    def draw(labels: np.ndarray) -> np.ndarray:
        return (centres[labels] + noise * rng.normal(size=(len(labels), d))).astype(np.float32)

    return draw(qids), draw(gids), qids, gids


def _brute_rerank(query: np.ndarray, gallery: np.ndarray, k1: int, k2: int, lam: float
                  ) -> np.ndarray:
    """The reference evaluation code's steps with Python sets and dicts, one pair at a time:
    squared distances from explicit differences, each column divided by its maximum and the
    matrix transposed."""
    x = np.concatenate([query, gallery]).astype(np.float64)
    n, nq = len(x), len(query)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    o = (d / d.max(0)).T
    order = [sorted(range(n), key=lambda j, i=i: (o[i, j], j)) for i in range(n)]

    def reciprocal(i: int, k: int) -> set[int]:
        return {j for j in order[i][:k + 1] if i in order[j][:k + 1]}

    v = []
    for i in range(n):
        base = reciprocal(i, k1)
        members = set(base)
        for j in base:
            candidate = reciprocal(j, round(k1 / 2))
            if len(candidate & base) > 2 / 3 * len(candidate):
                members |= candidate
        weights = {j: math.exp(-o[i, j]) for j in members}
        total = sum(weights.values())
        v.append({j: w / total for j, w in weights.items()})
    if k2 != 1:
        expanded = []
        for i in range(n):
            near = order[i][:k2]
            keys = set().union(*(v[m] for m in near))
            expanded.append({k: sum(v[m].get(k, 0.0) for m in near) / len(near) for k in keys})
        v = expanded
    out = np.empty((nq, n - nq))
    for i in range(nq):
        for j in range(nq, n):
            s = sum(min(a, v[j].get(k, 0.0)) for k, a in v[i].items())
            out[i, j - nq] = (1 - s / (2 - s)) * (1 - lam) + o[i, j] * lam
    return out


# --------------------------------------------------------------------------------------------
# The dense reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k2", [1, 2])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_hand_computed_case(k2, lam):
    # Points 0 (query), 1, 10, 11 on a line, k1 = 1: R*(0) = R*(1) = {0, 1}, R*(2) = R*(3) =
    # {2, 3} (the k1/2 = 0 expansion only adds the candidate itself). Squared distances of the
    # query: 0, 1, 100, 121 (row max 121); of point 1: 1, 0, 81, 100 (row max 100).
    query, gallery = np.array([[0.0]]), np.array([[1.0], [10.0], [11.0]])
    v0 = np.exp(-np.array([0.0, 1 / 121]))
    v0 /= v0.sum()
    v1 = np.exp(-np.array([1 / 100, 0.0]))
    v1 /= v1.sum()
    if k2 == 2:  # 0 and 1 are each other's nearest: both become (v0 + v1) / 2
        v0 = v1 = (v0 + v1) / 2
    s = np.minimum(v0, v1).sum()
    jaccard = np.array([1 - s / (2 - s), 1.0, 1.0])  # disjoint supports: 1
    expected = jaccard * (1 - lam) + np.array([1, 100, 121]) / 121 * lam
    for out in (rerank_dense(query, gallery, k1=1, k2=k2, lambda_value=lam),
                rerank(query, gallery, k1=1, k2=k2, lambda_value=lam, chunk_size=1)):
        assert out.dtype == np.float32 and out.shape == (1, 3)
        np.testing.assert_allclose(out[0], expected, rtol=0, atol=1e-7)


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (4, 1, 0.0), (7, 3, 1.0), (3, 9, 0.5)])
def test_dense_matches_brute_force(k1, k2, lam):
    query, gallery, _, _ = _clustered(6, 40, d=8, ids=5, noise=0.8, seed=k1)
    expected = _brute_rerank(query, gallery, k1, k2, lam)
    out = rerank_dense(query, gallery, k1=k1, k2=k2, lambda_value=lam)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# The memory-bounded version against the dense reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q,g,chunk_size", [(20, 150, 16), (7, 60, 5), (1, 30, 1),
                                            (12, 90, 500)])
@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.0), (10, 3, 1.0), (3, 10, 0.5),
                                       (200, 6, 0.3)])
def test_matches_dense(q, g, chunk_size, k1, k2, lam):
    query, gallery, _, _ = _clustered(q, g, seed=q + k1)
    dense = rerank_dense(query, gallery, k1=k1, k2=k2, lambda_value=lam)
    out = rerank(query, gallery, k1=k1, k2=k2, lambda_value=lam, chunk_size=chunk_size)
    assert out.shape == (q, g) and out.dtype == np.float32
    assert np.abs(out - dense).max() <= 1e-6


def test_duplicates_do_not_depend_on_chunking():
    # Exact copies tie; the snapped distances keep the tie order independent of the chunking.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 64))
    x[150:170] = x[3]
    x[280:] = x[2]
    x[5] = x[7]
    query, gallery = x[:30], x[30:]
    dense = rerank_dense(query, gallery)
    for chunk_size in (1, 7, 64, 300):
        np.testing.assert_array_equal(rerank(query, gallery, chunk_size=chunk_size), dense)
    original = rerank(query, gallery, lambda_value=1.0)
    assert original[2, 280 - 30] == 0.0 and original[3, 150 - 30] == 0.0  # exact copies


def test_lambda_one_is_the_normalised_distance():
    query, gallery, _, _ = _clustered(9, 70, seed=1)
    x = np.concatenate([query, gallery]).astype(np.float64)
    d = ((query[:, None, :].astype(np.float64) - x[None]) ** 2).sum(-1)  # (Q, N)
    expected = (d / d.max(1, keepdims=True))[:, len(query):]
    np.testing.assert_allclose(rerank(query, gallery, lambda_value=1.0, chunk_size=8), expected,
                               rtol=0, atol=1e-6)


def test_lambda_zero_is_a_jaccard_distance():
    query, gallery, qids, gids = _clustered(9, 70, ids=10, noise=0.2, seed=2)
    out = rerank(query, gallery, k1=5, k2=1, lambda_value=0.0, chunk_size=8)
    assert out.min() >= 0.0 and out.max() <= 1.0
    other = qids[:, None] != gids[None, :]  # well separated identities share no neighbour
    assert (out[other] == 1.0).all() and out[~other].mean() < 0.9


def test_torch_and_numpy_inputs():
    query, gallery, _, _ = _clustered(10, 50, seed=4)
    expected = rerank(query, gallery, chunk_size=16)
    np.testing.assert_array_equal(
        rerank(torch.from_numpy(query), torch.from_numpy(gallery), chunk_size=16), expected)
    np.testing.assert_array_equal(rerank_dense(torch.from_numpy(query), gallery), expected)
    float64 = rerank(query.astype(np.float64), gallery.astype(np.float64), chunk_size=16)
    np.testing.assert_array_equal(float64, expected)  # features are used in float64 anyway
    np.testing.assert_array_equal(rerank(query, gallery, chunk_size=16, device="cpu"), expected)


def test_improves_map_on_clustered_identities():
    query, gallery, qids, gids = _clustered(50, 200, d=32, ids=25, noise=1.0, seed=5)
    before = reid_metrics(pairwise_distance(query, gallery), qids, gids, protocol="seed").mAP
    after = reid_metrics(rerank(query, gallery), qids, gids, protocol="seed").mAP
    assert after > before + 0.05, (before, after)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [rerank, rerank_dense])
@pytest.mark.parametrize("query,gallery,match", [
    (np.zeros((3, 4)), np.zeros((5, 3)), "same D"),
    (np.zeros(4), np.zeros((5, 4)), r"\(Q, D\)"),
    (np.zeros((0, 4)), np.zeros((5, 4)), "empty"),
    (np.zeros((3, 4)), np.zeros((0, 4)), "empty"),
])
def test_shape_errors(fn, query, gallery, match):
    with pytest.raises(ValueError, match=match):
        fn(query, gallery)


def test_non_finite_features_name_the_row():
    gallery = np.zeros((5, 4))
    gallery[3, 1] = np.nan
    with pytest.raises(ValueError, match="gallery_features: row 3"):
        rerank(np.ones((2, 4)), gallery)


@pytest.mark.parametrize("kwargs,match", [
    ({"k1": 0}, "k1"), ({"k2": 0}, "k2"), ({"k1": 2.5}, "k1"), ({"lambda_value": 1.5}, "lambda"),
    ({"lambda_value": -0.1}, "lambda"), ({"chunk_size": 0}, "chunk_size"),
])
def test_parameter_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rerank(np.ones((2, 4)), np.ones((5, 4)), **kwargs)


def test_stable_smallest_is_a_stable_argsort_prefix():
    values = torch.from_numpy(np.random.default_rng(6).integers(0, 4, size=(50, 40))).double()
    for k in (1, 5, 17, 40):
        expected = torch.sort(values, dim=1, stable=True).indices[:, :k]
        torch.testing.assert_close(_stable_smallest(values, k), expected, rtol=0, atol=0)


def test_public_metrics_entry_point_is_the_same():
    from attreid import metrics
    from attreid.metrics.reranking import rerank as direct

    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(6, 16)), rng.normal(size=(30, 16))
    np.testing.assert_array_equal(metrics.rerank(q, g, k1=5, k2=2), direct(q, g, k1=5, k2=2))
