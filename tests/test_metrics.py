"""Tests for attreid.metrics: vectorised code against brute-force loops and hand-computed cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from attreid.metrics import (
    BINARY_RAW_ATTRIBUTES,
    ReidResult,
    attribute_metrics,
    majority_baseline,
    pairwise_distance,
    predict_labels,
    reid_metrics,
)
from attreid.schema import MISSING, NUM_TASKS, TASK_NAMES, TASKS, tasks_to_raw

# --------------------------------------------------------------------------------------------
# Re-identification: brute-force reference
# --------------------------------------------------------------------------------------------


def _ref_reid(dist, qids, gids, qcams=None, gcams=None, protocol="market", max_rank=50,
              exclude_self=False):
    """One query at a time: filter, sort by (distance, gallery index), walk the ranking."""
    q, g = dist.shape
    length = min(max_rank, g)
    aps, inps, cmc = [], [], np.zeros(length)
    for i in range(q):
        ranked = []
        for j in sorted(range(g), key=lambda j: (dist[i, j], j)):
            if exclude_self and j == i:
                continue
            if protocol == "market":
                if gids[j] == -1:
                    continue
                if qcams is not None and gids[j] == qids[i] and gcams[j] == qcams[i]:
                    continue
            ranked.append(gids[j] == qids[i])
        hit_ranks = [r + 1 for r, is_match in enumerate(ranked) if is_match]
        if not hit_ranks:
            continue
        aps.append(sum((k + 1) / r for k, r in enumerate(hit_ranks)) / len(hit_ranks))
        inps.append(len(hit_ranks) / hit_ranks[-1])
        for k in range(length):
            cmc[k] += hit_ranks[0] <= k + 1
    return np.array(cmc) / len(aps), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def _random_case(seed: int, q: int = 17, g: int = 41, ties: bool = False):
    rng = np.random.default_rng(seed)
    pool = np.array([-1, 0, 1, 2, 3, 4, 5, 6])  # junk, distractor, six identities
    gids = rng.choice(pool, size=g)
    qids = rng.choice(pool[1:], size=q)  # queries: distractor or a real identity
    qcams, gcams = rng.integers(1, 4, size=q), rng.integers(1, 4, size=g)
    dist = rng.integers(0, 5, size=(q, g)).astype(np.float64) if ties else rng.random((q, g))
    return dist, qids, gids, qcams, gcams


def _assert_equal_to_ref(res: ReidResult, ref) -> None:
    cmc, m_ap, m_inp, n_valid = ref
    np.testing.assert_allclose(res.cmc, cmc, rtol=0, atol=1e-12)
    assert res.mAP == pytest.approx(m_ap, abs=1e-12)
    assert res.mINP == pytest.approx(m_inp, abs=1e-12)
    assert res.num_valid_queries == n_valid


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("with_cams", [False, True])
def test_reid_market_matches_brute_force(seed: int, ties: bool, with_cams: bool) -> None:
    dist, qids, gids, qcams, gcams = _random_case(seed, ties=ties)
    cams = (qcams, gcams) if with_cams else (None, None)
    res = reid_metrics(dist, qids, gids, *cams, protocol="market", max_rank=10, chunk_size=4)
    _assert_equal_to_ref(res, _ref_reid(dist, qids, gids, *cams, protocol="market",
                                        max_rank=10))
    assert res.cmc.shape == (10,) and res.num_queries == len(qids)


@pytest.mark.parametrize("seed", range(6))
def test_reid_seed_matches_brute_force(seed: int) -> None:
    dist, qids, gids, qcams, gcams = _random_case(seed, ties=seed % 2 == 0)
    res = reid_metrics(dist, qids, gids, qcams, gcams, protocol="seed", chunk_size=5)
    # cams are ignored and junk (-1) is an ordinary id under "seed"
    _assert_equal_to_ref(res, _ref_reid(dist, qids, gids, protocol="seed"))
    assert res.cmc.shape == (41,)  # max_rank 50 capped at G


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("protocol", ["seed", "market"])
def test_reid_exclude_self_matches_brute_force(seed: int, protocol: str) -> None:
    rng = np.random.default_rng(100 + seed)
    n = 30
    ids = rng.integers(0, 8, size=n)
    cams = rng.integers(1, 3, size=n)
    feats = rng.normal(size=(n, 4))
    dist = pairwise_distance(feats, feats).numpy()  # zero diagonal: self would rank first
    res = reid_metrics(dist, ids, ids, cams, cams, protocol=protocol, exclude_self=True,
                       chunk_size=7)
    _assert_equal_to_ref(res, _ref_reid(dist, ids, ids, cams, cams, protocol=protocol,
                                        exclude_self=True))
    tied = rng.integers(0, 3, size=(n, n)).astype(np.float32)  # ties, also with the diagonal
    res = reid_metrics(tied, ids, ids, cams, cams, protocol=protocol, exclude_self=True,
                       chunk_size=4)
    _assert_equal_to_ref(res, _ref_reid(tied, ids, ids, cams, cams, protocol=protocol,
                                        exclude_self=True))


def test_reid_exclude_self_removes_the_diagonal() -> None:
    ids = np.array([1, 1, 2, 2])
    dist = np.array([[0.0, 1, 2, 3], [1, 0, 2, 3], [2, 3, 0, 1], [2, 3, 1, 0]])
    with_self = reid_metrics(dist, ids, ids, protocol="seed")
    assert with_self.mAP == 1.0  # the query itself is the rank-1 "match"
    res = reid_metrics(dist, ids, ids, protocol="seed", exclude_self=True)
    assert res.mAP == 1.0 and res.rank(1) == 1.0 and res.cmc.shape == (4,)
    # swap: each query's partner is now last among the 3 others
    far = np.array([[0.0, 3, 1, 2], [3, 0, 1, 2], [1, 2, 0, 3], [1, 2, 3, 0]])
    res = reid_metrics(far, ids, ids, protocol="seed", exclude_self=True)
    assert res.mAP == pytest.approx(1 / 3) and res.mINP == pytest.approx(1 / 3)
    np.testing.assert_allclose(res.cmc, [0, 0, 1, 1])


@pytest.mark.parametrize("protocol", ["seed", "market"])
def test_reid_chunk_size_gives_identical_results(protocol: str) -> None:
    dist, qids, gids, qcams, gcams = _random_case(7, q=50, g=80, ties=True)
    results = [reid_metrics(dist, qids, gids, qcams, gcams, protocol=protocol, chunk_size=c)
               for c in (1, 3, 16, 1000)]
    for res in results[1:]:
        np.testing.assert_array_equal(res.cmc, results[0].cmc)
        assert res.mAP == results[0].mAP and res.mINP == results[0].mINP
        assert res.num_valid_queries == results[0].num_valid_queries


def test_reid_hand_computed_ranks_1_and_3_of_4() -> None:
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    res = reid_metrics(dist, np.array([5]), np.array([5, 7, 5, 8]), protocol="seed")
    assert res.mAP == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert res.mINP == pytest.approx(2 / 3)
    np.testing.assert_allclose(res.cmc, [1, 1, 1, 1])
    # first match at rank 2 instead
    res = reid_metrics(dist, np.array([7]), np.array([5, 7, 5, 7]), protocol="seed")
    assert res.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert res.mINP == pytest.approx(2 / 4)
    np.testing.assert_allclose(res.cmc, [0, 1, 1, 1])


def test_reid_hand_computed_market_filters() -> None:
    # query id 5, camera 1. Gallery by distance: same id+cam (removed), junk (removed),
    # distractor 0 (a wrong match), id 5 cam 2 (a match), id 5 cam 1 (removed), id 9.
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
    gids = np.array([5, -1, 0, 5, 5, 9])
    gcams = np.array([1, 2, 3, 2, 1, 2])
    res = reid_metrics(dist, np.array([5]), gids, np.array([1]), gcams, protocol="market")
    assert res.mAP == pytest.approx(1 / 2) and res.mINP == pytest.approx(1 / 2)
    np.testing.assert_allclose(res.cmc, [0, 1, 1, 1, 1, 1])
    # without cameras: only junk is removed, both id-5 cam-1 entries count
    res = reid_metrics(dist, np.array([5]), gids, protocol="market")
    assert res.mAP == pytest.approx((1 + 2 / 3 + 3 / 4) / 3)
    assert res.mINP == pytest.approx(3 / 4)
    # "seed": nothing removed, junk is just another id
    res = reid_metrics(dist, np.array([5]), gids, np.array([1]), gcams, protocol="seed")
    assert res.mAP == pytest.approx((1 + 2 / 4 + 3 / 5) / 3)


def test_reid_ties_are_broken_by_gallery_index() -> None:
    dist = np.zeros((1, 4))
    res = reid_metrics(dist, np.array([1]), np.array([2, 1, 2, 1]), protocol="seed")
    assert res.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    res = reid_metrics(dist, np.array([1]), np.array([1, 2, 1, 2]), protocol="seed")
    assert res.mAP == pytest.approx((1 + 2 / 3) / 2)
    for _ in range(3):  # repeated calls agree
        again = reid_metrics(dist, np.array([1]), np.array([1, 2, 1, 2]), protocol="seed")
        assert again.mAP == res.mAP


@pytest.mark.parametrize("seed", range(4))
def test_reid_infinite_distances_and_many_matches_match_brute_force(seed: int) -> None:
    """+inf distances (tied with the pads of the match table) and a query whose matches
    outnumber the others: the rank counting must still agree with the sorted walk."""
    rng = np.random.default_rng(50 + seed)
    dist, qids, gids, qcams, gcams = _random_case(seed, q=12, g=60, ties=True)
    dist[rng.random(dist.shape) < 0.2] = np.inf
    gids[:40] = qids[0]  # query 0: most of the gallery matches
    for protocol in ("market", "seed"):
        res = reid_metrics(dist, qids, gids, qcams, gcams, protocol=protocol, chunk_size=5)
        _assert_equal_to_ref(res, _ref_reid(dist, qids, gids, qcams, gcams, protocol=protocol))


@pytest.mark.parametrize("seed", range(4))
def test_reid_good_rankings_with_ties_match_brute_force(seed: int) -> None:
    """Matches close to their query (a trained model): most of the gallery lies beyond the
    last match, the case where only a few entries per query are counted at all."""
    dist, qids, gids, qcams, gcams = _random_case(20 + seed, q=15, g=200, ties=False)
    same = gids[None, :] == qids[:, None]
    dist = np.where(same, dist * 0.3, 0.25 + dist)  # matches mostly first
    dist = np.round(dist, 2)  # and ties, some between a match and a non-match
    for protocol in ("market", "seed"):
        res = reid_metrics(dist, qids, gids, qcams, gcams, protocol=protocol, chunk_size=4)
        _assert_equal_to_ref(res, _ref_reid(dist, qids, gids, qcams, gcams, protocol=protocol))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_reid_float_dtypes_match_brute_force(dtype) -> None:
    dist, qids, gids, qcams, gcams = _random_case(11, q=20, g=70, ties=False)
    dist = dist.astype(dtype)
    res = reid_metrics(dist, qids, gids, qcams, gcams, chunk_size=6)
    _assert_equal_to_ref(res, _ref_reid(dist, qids, gids, qcams, gcams))


def test_reid_integer_distances_match_brute_force() -> None:
    dist, qids, gids, qcams, gcams = _random_case(12, q=20, g=70, ties=True)
    dist = dist.astype(np.int32)  # many ties
    res = reid_metrics(dist, qids, gids, qcams, gcams, chunk_size=6)
    _assert_equal_to_ref(res, _ref_reid(dist, qids, gids, qcams, gcams))


def test_reid_numpy_and_torch_inputs_agree() -> None:
    dist, qids, gids, qcams, gcams = _random_case(3)
    a = reid_metrics(dist, qids, gids, qcams, gcams)
    b = reid_metrics(torch.from_numpy(dist), torch.from_numpy(qids), torch.from_numpy(gids),
                     torch.from_numpy(qcams), torch.from_numpy(gcams), device="cpu")
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert (a.mAP, a.mINP, a.num_valid_queries) == (b.mAP, b.mINP, b.num_valid_queries)
    c = reid_metrics(torch.from_numpy(dist).float(), qids.astype(np.int32), gids, qcams, gcams)
    assert c.mAP == pytest.approx(a.mAP, abs=1e-6)
    c = reid_metrics(dist.tolist(), qids.tolist(), gids.tolist(), qcams.tolist(), gcams.tolist())
    assert c.mAP == pytest.approx(a.mAP, abs=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_reid_on_cuda_matches_cpu() -> None:
    dist, qids, gids, qcams, gcams = _random_case(4, q=60, g=90, ties=True)
    a = reid_metrics(dist, qids, gids, qcams, gcams, chunk_size=7)
    b = reid_metrics(dist, qids, gids, qcams, gcams, chunk_size=7, device="cuda")
    np.testing.assert_array_equal(a.cmc, b.cmc)
    assert a.mAP == pytest.approx(b.mAP, abs=1e-12) and a.mINP == pytest.approx(b.mINP, abs=1e-12)


def test_reid_queries_without_match_are_skipped() -> None:
    dist = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]])
    res = reid_metrics(dist, np.array([1, 3, 2]), np.array([2, 1]), protocol="seed")
    assert res.num_valid_queries == 2 and res.num_queries == 3
    assert res.mAP == pytest.approx((1 / 2 + 1) / 2)
    np.testing.assert_allclose(res.cmc, [0.5, 1.0])


def test_reid_no_valid_query_raises() -> None:
    dist = np.array([[0.1, 0.2]])
    with pytest.raises(ValueError, match="no valid query.*'seed': no query identity appears"):
        reid_metrics(dist, np.array([3]), np.array([1, 2]), protocol="seed")
    # only same-camera matches (one camera for all images): the message says why and what to do
    with pytest.raises(ValueError, match=r"query's own camera .* one camera for all images no "
                                         r"match is left\. Evaluate without the camera filter "
                                         r"\(attreid evaluate --protocol seed"):
        reid_metrics(dist, np.array([1]), np.array([1, 1]), np.array([1]), np.array([1, 1]))
    assert reid_metrics(dist, np.array([1]), np.array([1, 1]), np.array([1]), np.array([1, 1]),
                        protocol="seed").mAP == 1.0  # the advice works


@pytest.mark.parametrize("kwargs, message", [
    (dict(distmat=np.zeros(3)), "distmat"),
    (dict(query_ids=np.array([1, 2, 3])), "query_ids"),
    (dict(gallery_ids=np.array([1, 2])), "gallery_ids"),
    (dict(query_ids=np.array([1.0, 2.0])), "integer"),
    (dict(query_cams=np.array([1, 1])), "both or neither"),
    (dict(query_cams=np.array([1]), gallery_cams=np.array([1, 1, 1])), "query_cams"),
    (dict(protocol="duke"), "protocol"),
    (dict(max_rank=0), "max_rank"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(exclude_self=True), "Q == G"),
    (dict(distmat=np.array([[0.1, np.nan, 0.3], [0.1, 0.2, 0.3]])), "NaN"),
])
def test_reid_bad_input_raises(kwargs: dict, message: str) -> None:
    args = dict(distmat=np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]]),
                query_ids=np.array([1, 2]), gallery_ids=np.array([1, 2, 2]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        reid_metrics(**args)


def test_reid_result_rank_and_as_dict() -> None:
    dist, qids, gids, qcams, gcams = _random_case(2, g=60)
    res = reid_metrics(dist, qids, gids, qcams, gcams, max_rank=20)
    assert res.rank(1) == res.cmc[0] and res.rank(20) == res.cmc[19]
    with pytest.raises(ValueError, match="k"):
        res.rank(21)
    d = res.as_dict()
    assert set(d) == {"rank1", "rank5", "rank10", "rank20", "mAP", "mINP",
                      "num_valid_queries", "num_queries"}
    assert all(0.0 <= d[k] <= 1.0 for k in ("rank1", "rank20", "mAP", "mINP"))
    json.dumps(d)
    short = reid_metrics(dist, qids, gids, qcams, gcams, max_rank=6).as_dict()
    assert "rank10" not in short and "rank5" in short
    with pytest.raises(ValueError):
        res.cmc[0] = 0.5  # read-only


# --------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------


def test_pairwise_distance_against_cdist_and_loops() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(9, 5, generator=g,
                                                                            dtype=torch.float64)
    euc = pairwise_distance(a, b)
    torch.testing.assert_close(euc, torch.cdist(a, b))
    torch.testing.assert_close(pairwise_distance(a, b, "squared"), torch.cdist(a, b) ** 2)
    cos = pairwise_distance(a.numpy(), b.numpy(), "cosine")
    for i in range(7):
        for j in range(9):
            ref = 1 - float(a[i] @ b[j]) / float(a[i].norm() * b[j].norm())
            assert cos[i, j].item() == pytest.approx(ref, abs=1e-12)
            assert euc[i, j].item() == pytest.approx(float((a[i] - b[j]).norm()), abs=1e-12)
    assert euc.shape == (7, 9) and cos.dtype == torch.float64


def test_pairwise_distance_identical_rows_give_zero_not_nan() -> None:
    a = torch.randn(4, 16) * 100
    d = pairwise_distance(a, a)
    assert not torch.isnan(d).any() and (d >= 0).all()
    assert torch.diagonal(d).max() < 1e-3 * d.max()  # float32 cancellation, not exactly 0
    assert pairwise_distance(np.arange(6).reshape(2, 3), np.ones((1, 3))).dtype == torch.float32


def test_pairwise_distance_bad_input_raises() -> None:
    with pytest.raises(ValueError, match="same D"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="metric"):
        pairwise_distance(np.zeros((2, 3)), np.zeros((2, 3)), "manhattan")


# --------------------------------------------------------------------------------------------
# Attributes
# --------------------------------------------------------------------------------------------

SIZES = [t.num_classes for t in TASKS]


def _random_labels(rng: np.random.Generator, n: int, missing: float = 0.0) -> np.ndarray:
    labels = np.stack([rng.integers(0, c, size=n) for c in SIZES], axis=1)
    labels[rng.random(labels.shape) < missing] = MISSING
    return labels


def _ref_attributes(pred: np.ndarray, true: np.ndarray) -> dict:
    """Loops over tasks, rows and the 26 raw binary attributes."""
    acc, maj = {}, {}
    for j, name in enumerate(TASK_NAMES):
        pairs = [(p, t) for p, t in zip(pred[:, j], true[:, j]) if t != MISSING]
        acc[name] = sum(p == t for p, t in pairs) / len(pairs) if pairs else math.nan
        known = [t for _, t in pairs]
        maj[name] = max(known.count(c) for c in set(known)) / len(known) if known else math.nan
    rows = [i for i in range(len(true)) if all(t != MISSING for t in true[i])]
    p_sets = [{a for a, v in tasks_to_raw(pred[i]).items() if a != "age" and v == 2} for i in rows]
    t_sets = [{a for a, v in tasks_to_raw(true[i]).items() if a != "age" and v == 2} for i in rows]
    per_attr = {}
    for a in BINARY_RAW_ATTRIBUTES:
        tp = sum(a in p and a in t for p, t in zip(p_sets, t_sets))
        tn = sum(a not in p and a not in t for p, t in zip(p_sets, t_sets))
        pos = sum(a in t for t in t_sets)
        neg = len(t_sets) - pos
        rates = ([tp / pos] if pos else []) + ([tn / neg] if neg else [])
        per_attr[a] = sum(rates) / len(rates)
    ratio = (lambda x, y, p, t: len(x) / len(y) if y else float(not p and not t))
    inst_acc = np.mean([ratio(p & t, p | t, p, t) for p, t in zip(p_sets, t_sets)])
    inst_prec = np.mean([ratio(p & t, p, p, t) for p, t in zip(p_sets, t_sets)])
    inst_rec = np.mean([ratio(p & t, t, p, t) for p, t in zip(p_sets, t_sets)])
    return dict(accuracy=acc, majority=maj, per_attribute_mA=per_attr,
                mA=np.mean(list(per_attr.values())), instance_accuracy=inst_acc,
                instance_precision=inst_prec, instance_recall=inst_rec,
                instance_f1=2 * inst_prec * inst_rec / (inst_prec + inst_rec),
                num_complete_rows=len(rows))


@pytest.mark.parametrize("seed", range(4))
def test_attribute_metrics_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    true = _random_labels(rng, 60, missing=0.03)
    pred = np.where(rng.random(true.shape) < 0.6, np.maximum(true, 0), _random_labels(rng, 60))
    res = attribute_metrics(pred, true)
    ref = _ref_attributes(pred, true)
    for key in ("accuracy", "majority", "per_attribute_mA"):
        got, want = getattr(res, key), ref[key]
        assert list(got) == list(want)
        for name in want:
            assert got[name] == pytest.approx(want[name], abs=1e-12), (key, name)
    for key in ("mA", "instance_accuracy", "instance_precision", "instance_recall",
                "instance_f1"):
        assert getattr(res, key) == pytest.approx(ref[key], abs=1e-12), key
    assert res.num_complete_rows == ref["num_complete_rows"] and res.num_samples == 60
    assert res.mean_accuracy == pytest.approx(np.mean(list(ref["accuracy"].values())))
    assert res.mean_majority == pytest.approx(np.mean(list(ref["majority"].values())))


def _toy() -> tuple[np.ndarray, np.ndarray]:
    true = np.zeros((3, NUM_TASKS), dtype=np.int64)
    pred = np.zeros((3, NUM_TASKS), dtype=np.int64)
    # row 0: T = {upblack, downblack}; P adds backpack -> |P∩T| = 2, |P∪T| = |P| = 3, |T| = 2
    pred[0, TASK_NAMES.index("backpack")] = 1
    # row 1: T = {gender (female)}, colours multicolour; P = {} (male, multicolour)
    true[1, TASK_NAMES.index("gender")] = 1
    true[1, 10], true[1, 11] = 8, 9
    pred[1, 10], pred[1, 11] = 8, 9
    # row 2: age unknown -> out of the binary view; hat wrong
    true[2, 0] = MISSING
    pred[2, TASK_NAMES.index("hat")] = 1
    return pred, true


def test_attribute_metrics_hand_computed_toy() -> None:
    pred, true = _toy()
    res = attribute_metrics(pred, true)
    assert res.accuracy["age"] == 1.0  # rows 0, 1 only; row 2 is MISSING
    assert res.accuracy["backpack"] == pytest.approx(2 / 3)
    assert res.accuracy["hat"] == pytest.approx(2 / 3)
    assert res.accuracy["gender"] == pytest.approx(2 / 3)
    assert res.accuracy["upcolor"] == 1.0
    assert res.mean_accuracy == pytest.approx((9 + 3 * 2 / 3) / 12)
    assert res.majority["gender"] == pytest.approx(2 / 3) and res.majority["age"] == 1.0
    assert res.num_complete_rows == 2
    # binary view over rows 0, 1
    assert res.instance_accuracy == pytest.approx((2 / 3 + 0) / 2)
    assert res.instance_precision == pytest.approx((2 / 3 + 0) / 2)
    assert res.instance_recall == pytest.approx((1 + 0) / 2)
    assert res.instance_f1 == pytest.approx(2 / 5)
    # backpack: no positives -> TNR = 1/2; gender: TPR 0, TNR 1 -> 1/2; the other 24 -> 1
    assert res.per_attribute_mA["backpack"] == pytest.approx(0.5)
    assert res.per_attribute_mA["gender"] == pytest.approx(0.5)
    assert res.per_attribute_mA["upblack"] == 1.0 and res.per_attribute_mA["hat"] == 1.0
    assert len(res.per_attribute_mA) == 26  # every raw column but age
    assert res.mA == pytest.approx(25 / 26)


def test_attribute_metrics_empty_sets_are_perfect_when_both_empty() -> None:
    labels = np.zeros((1, NUM_TASKS), dtype=np.int64)
    labels[0, 10], labels[0, 11] = 8, 9  # all binary attributes negative, multicolour
    res = attribute_metrics(labels, labels)
    assert (res.instance_accuracy, res.instance_precision, res.instance_recall) == (1, 1, 1)
    assert res.instance_f1 == 1.0 and res.mA == 1.0


def test_attribute_metrics_accepts_logits() -> None:
    rng = np.random.default_rng(5)
    true = _random_labels(rng, 25, missing=0.1)
    logits = {t.name: torch.randn(25, t.num_outputs) for t in TASKS}
    from_logits = attribute_metrics(logits, torch.from_numpy(true))
    from_labels = attribute_metrics(predict_labels(logits), true)
    assert from_logits.as_dict() == from_labels.as_dict()


def test_attribute_metrics_nan_where_undefined_and_as_dict() -> None:
    rng = np.random.default_rng(1)
    true = _random_labels(rng, 10)
    true[:, 3] = MISSING  # handbag unknown everywhere -> no complete row
    res = attribute_metrics(_random_labels(rng, 10), true)
    assert math.isnan(res.accuracy["handbag"]) and math.isnan(res.majority["handbag"])
    assert not math.isnan(res.mean_accuracy)
    assert res.num_complete_rows == 0 and math.isnan(res.mA)
    assert math.isnan(res.instance_f1)
    d = res.as_dict()
    assert d["accuracy"]["handbag"] is None and d["mA"] is None
    json.dumps(d, allow_nan=False)


def test_attribute_metrics_bad_input_raises() -> None:
    good = np.zeros((4, NUM_TASKS), dtype=np.int64)
    with pytest.raises(ValueError, match="shapes differ"):
        attribute_metrics(good, good[:3])
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        attribute_metrics(good[:, :11], good)
    bad = good.copy()
    bad[2, 0] = 4
    with pytest.raises(ValueError, match="row 2, task 'age'"):
        attribute_metrics(good, bad)
    with pytest.raises(ValueError, match="predictions"):
        attribute_metrics(np.full_like(good, MISSING), good)
    with pytest.raises(ValueError, match="MISSING"):
        attribute_metrics(good, np.full_like(good, MISSING))


def test_predict_labels_threshold_and_argmax() -> None:
    logits = {t.name: torch.zeros(3, t.num_outputs) for t in TASKS}
    logits["backpack"] = torch.tensor([[0.5], [-0.5], [0.0]])
    logits["gender"] = torch.tensor([2.0, -1.0, 1e-3])  # (N,) also accepted
    logits["age"] = torch.tensor([[0.0, 3, 1, 2], [5, 0, 0, 0], [1, 1, 1, 1]])
    out = predict_labels(logits)
    assert out.shape == (3, NUM_TASKS) and out.dtype == torch.int64
    assert out[:, TASK_NAMES.index("backpack")].tolist() == [1, 0, 0]  # 0 is not > 0
    assert out[:, TASK_NAMES.index("gender")].tolist() == [1, 0, 1]
    assert out[:, 0].tolist() == [1, 0, 0]  # ties -> first maximum
    np_out = predict_labels({k: v.numpy() for k, v in logits.items()})
    assert torch.equal(np_out, out)


def test_predict_labels_bad_input_raises() -> None:
    logits = {t.name: torch.zeros(3, t.num_outputs) for t in TASKS}
    with pytest.raises(ValueError, match="missing \\['hat'\\]"):
        predict_labels({k: v for k, v in logits.items() if k != "hat"})
    with pytest.raises(ValueError, match="upcolor"):
        predict_labels({**logits, "upcolor": torch.zeros(3, 8)})
    with pytest.raises(ValueError, match="bag"):
        predict_labels({**logits, "bag": torch.zeros(4, 1)})


def test_majority_baseline_hand_computed() -> None:
    train = np.zeros((4, NUM_TASKS), dtype=np.int64)
    evals = np.zeros((5, NUM_TASKS), dtype=np.int64)
    train[:, 0] = [2, 2, 1, MISSING]  # age majority 2
    evals[:, 0] = [2, 1, 2, MISSING, 0]  # 2 of 4 known
    train[:, 1] = [0, 1, 1, 0]  # tie -> class 0
    evals[:, 1] = [1, 1, 1, 0, 0]
    train[:, 2] = MISSING  # no train label -> NaN
    evals[:, 3] = MISSING  # no eval label -> NaN
    out = majority_baseline(train, torch.from_numpy(evals))
    assert list(out) == list(TASK_NAMES)
    assert out["age"] == pytest.approx(2 / 4)
    assert out["backpack"] == pytest.approx(2 / 5)
    assert math.isnan(out["bag"]) and math.isnan(out["handbag"])
    assert out["gender"] == 1.0


def test_majority_baseline_matches_loop() -> None:
    rng = np.random.default_rng(9)
    train, evals = _random_labels(rng, 80, 0.1), _random_labels(rng, 40, 0.1)
    out = majority_baseline(train, evals)
    for j, name in enumerate(TASK_NAMES):
        known = [int(v) for v in train[:, j] if v != MISSING]
        cls = min(set(known), key=lambda c: (-known.count(c), c))
        ev = [int(v) for v in evals[:, j] if v != MISSING]
        assert out[name] == pytest.approx(sum(v == cls for v in ev) / len(ev))
