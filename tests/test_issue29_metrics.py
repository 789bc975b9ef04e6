"""Issue 29, items 5, 8, 9, 12 and mA: exact small distances, mA's one-sided attributes,
unsupported operating points, filtered IVF searches that come back whole, and copies of a
query left out of its own ranking. Every value is checked against a brute force or a hand
computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from attreid.metrics.attributes import BINARY_RAW_ATTRIBUTES, attribute_metrics
from attreid.metrics.distance import pairwise_distance
from attreid.metrics.verification import PairDistances, far_support, threshold_at_far
from attreid.schema import NUM_TASKS, TASK_NAMES

# --------------------------------------------------------------------------------------------
# 12: small distances exactly
# --------------------------------------------------------------------------------------------


def _float64_brute(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    if metric == "cosine":
        ua = a / np.linalg.norm(a, axis=1, keepdims=True)
        ub = b / np.linalg.norm(b, axis=1, keepdims=True)
        return 1.0 - ua @ ub.T
    sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return sq if metric == "squared" else np.sqrt(sq)


@pytest.mark.parametrize("metric", ["euclidean", "squared", "cosine"])
def test_self_distance_is_exactly_zero(metric: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 512)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # embeddings as the models give them
    d = pairwise_distance(x, x, metric)
    assert torch.equal(d.diagonal(), torch.zeros(40))  # was 2.7e-4 to 7e-4 (euclidean)


@pytest.mark.parametrize("metric", ["euclidean", "squared", "cosine"])
def test_small_distances_match_float64(metric: str) -> None:
    """Near-duplicates (noise 1e-5 .. 1e-2 of a unit vector) against float64 brute force."""
    rng = np.random.default_rng(1)
    base = rng.normal(size=(30, 256)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    scale = np.logspace(-5, -2, 30)[:, None]
    near = (base + scale * rng.normal(size=base.shape) / 16).astype(np.float32)
    got = pairwise_distance(base, near, metric).double().numpy()
    want = _float64_brute(base, near, metric)
    diag = np.diagonal(want)
    assert diag.max() < 0.1  # truly small distances
    np.testing.assert_allclose(np.diagonal(got), diag, rtol=1e-5, atol=1e-6)
    if metric == "euclidean":  # the float32 expansion alone is off by far more than that
        ta, tb = torch.from_numpy(base), torch.from_numpy(near)
        expanded = ((ta * ta).sum(1) + (tb * tb).sum(1) - 2 * (ta * tb).sum(1)).clamp(min=0)
        assert np.abs(expanded.sqrt().double().numpy() - diag).max() > 1e-5
    # the large ones keep their float32 accuracy
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_verify_path_gives_zero_for_the_same_crop() -> None:
    from attreid.inference.verdicts import compare_embeddings

    rng = np.random.default_rng(2)
    a = rng.normal(size=128).astype(np.float32)
    a /= np.linalg.norm(a)
    assert compare_embeddings(a, a.copy(), "euclidean", None).distance == 0.0


# --------------------------------------------------------------------------------------------
# mA: attributes without positives (or negatives)
# --------------------------------------------------------------------------------------------


def test_ma_one_sided_attributes_named_and_hand_computed() -> None:
    """Four complete rows, all labels 0 but: gender female in rows 0, 1 (predicted female in
    row 0 only), hat predicted in row 3 (no row has a hat)."""
    true = np.zeros((4, NUM_TASKS), dtype=np.int64)
    pred = np.zeros((4, NUM_TASKS), dtype=np.int64)
    gender, hat = TASK_NAMES.index("gender"), TASK_NAMES.index("hat")
    true[[0, 1], gender] = 1
    pred[0, gender] = 1
    pred[3, hat] = 1
    res = attribute_metrics(pred, true)
    # gender: TPR 1/2, TNR 2/2 -> 3/4; hat: no positives, TNR 3/4 alone -> 3/4
    assert res.per_attribute_mA["gender"] == pytest.approx(0.75)
    assert res.per_attribute_mA["hat"] == pytest.approx(0.75)
    # every raw binary attribute but gender is constant over the 4 rows
    assert set(res.one_sided) == set(BINARY_RAW_ATTRIBUTES) - {"gender"}
    assert res.mA == pytest.approx((0.75 + 0.75 + 24 * 1.0) / 26)
    assert res.as_dict()["one_sided"] == res.one_sided


# --------------------------------------------------------------------------------------------
# 9: unsupported operating points
# --------------------------------------------------------------------------------------------


def _pairs(num_impostor: int, seed: int = 0) -> PairDistances:
    rng = np.random.default_rng(seed)
    impostor = np.sort(rng.uniform(1.0, 2.0, num_impostor))
    genuine = np.sort(rng.uniform(0.2, 1.2, 500))
    return PairDistances(genuine, impostor, impostor, num_impostor, 200, 20)


def test_far_support_by_pair_count() -> None:
    pairs = _pairs(7_628)
    t = {f: threshold_at_far(pairs, f) for f in (1e-2, 1e-3, 1e-4)}
    assert t[1e-4] < pairs.impostor_tail[0]  # below every impostor: the case
    assert far_support(pairs, 1e-2, t[1e-2]) is None  # 76 impostor pairs at 1e-2
    why = far_support(pairs, 1e-3, t[1e-3])  # 7.6 < 10
    assert why == "unsupported: 7,628 impostor pairs support FAR down to ~0.0013"
    assert far_support(pairs, 1e-4, t[1e-4]) == why
    exact = _pairs(10_000)  # 10 / 1e-3: just enough
    assert far_support(exact, 1e-3, threshold_at_far(exact, 1e-3)) is None
    assert far_support(exact, 1e-4, threshold_at_far(exact, 1e-4)) is not None


def _calibration(tmp_path, num_impostor: int):
    from attreid.inference.calibration import fit_calibration

    cal = fit_calibration(_pairs(num_impostor), "platt", "euclidean", False, "0" * 64,
                          {"data": "toy", "pairs": f"500 genuine + {num_impostor:,} impostor "
                                                   "pairs"})
    return cal, cal.save(tmp_path / "toy.calibration.json")


def test_calibration_marks_unsupported_points(tmp_path) -> None:
    from attreid.inference.calibration import Calibration
    from attreid.inference.verdicts import summarize

    cal, path = _calibration(tmp_path, 7_628)
    assert sorted(cal.unsupported) == ["1e-03", "1e-04"]
    stored = json.loads(path.read_text())
    assert stored["unsupported"]["1e-04"] == ("unsupported: 7,628 impostor pairs support FAR "
                                              "down to ~0.0013")
    assert cal.support(1e-2) == ""
    assert cal.support(1e-4) == ("FAR 0.0001 is unsupported: 7,628 impostor pairs support FAR "
                                 "down to ~0.0013 (its threshold is used anyway; FAR 0.01 is "
                                 "supported)")
    lines = summarize(cal)
    assert any(line.startswith("  FAR 0.0001: threshold") and line.endswith(
        "; unsupported: 7,628 impostor pairs support FAR down to ~0.0013") for line in lines)
    assert any(line.startswith("  FAR 0.01: threshold") and "unsupported" not in line
               for line in lines)
    # a file written before the field existed gets it from its pair count
    del stored["unsupported"]
    path.write_text(json.dumps(stored))
    assert sorted(Calibration.load(path).unsupported) == ["1e-03", "1e-04"]
    big, _ = _calibration(tmp_path, 200_000)
    assert big.unsupported == {} and big.support(1e-4) == ""


def test_verdicts_at_an_unsupported_far_say_so(tmp_path) -> None:
    from attreid.inference.verdicts import verdict

    cal, _ = _calibration(tmp_path, 7_628)
    low = verdict(0.1, cal, 1e-4)
    assert low.same is True and low.threshold == cal.thresholds["1e-04"]
    assert low.unsupported == cal.support(1e-4) != ""
    assert low.as_dict()["unsupported"] == low.unsupported
    assert verdict(0.1, cal, 1e-2).unsupported == ""
    assert verdict(0.1, None, 1e-4).unsupported == ""  # uncalibrated: nothing to support


# --------------------------------------------------------------------------------------------
# 5: filtered IVF searches come back whole
# --------------------------------------------------------------------------------------------


def _clustered_index(tmp_path):
    """An IVF index (8 lists, 1 probed) of 8 well-separated clusters of 40 crops; camera 3
    holds 20 crops of cluster 5 and 5 of cluster 6, every other crop is camera 1."""
    from conftest import require

    require("faiss", "gallery search needs faiss (pip install 'attreid[search]')")
    from pathlib import Path

    from attreid.schema import TASKS
    from attreid.search import write_index

    rng = np.random.default_rng(29)
    centres = rng.standard_normal((8, 16)) * 20
    cluster = np.repeat(np.arange(8), 40)
    emb = (centres[cluster] + rng.standard_normal((320, 16))).astype(np.float32)
    cams = np.ones(320, dtype=np.int64)
    cams[5 * 40:5 * 40 + 20] = 3
    cams[6 * 40:6 * 40 + 5] = 3
    paths = [f"/g/0001_c{c}s1_{i:06d}_00.jpg" for i, c in enumerate(cams)]
    probs = {t.name: np.full((320, t.num_classes), 1 / t.num_classes, np.float32)
             for t in TASKS}
    index = write_index(tmp_path / "ivf", paths, emb, probs, checkpoint=Path("model.pt"),
                        checkpoint_sha256="0" * 64, kind="ivf", nlist=8, nprobe=1)
    query = (emb[3] + 0.1 * rng.standard_normal(16)).astype(np.float32)  # in cluster 0
    return index, emb, cams, query


@pytest.mark.parametrize("k", [10, 25, 50])
def test_filtered_ivf_search_equals_brute_force_over_the_allowed_rows(tmp_path, k):
    index, emb, cams, query = _clustered_index(tmp_path)
    allowed = np.flatnonzero(cams == 3)  # 25 rows, none in the query's list
    faiss = __import__("faiss")
    params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBatch(allowed), nprobe=1)
    _, plain = index.vectors.search(query[None], min(k, 25), params=params)
    assert (plain >= 0).sum() < min(k, 25)  # what the index gave before: short, silently
    dist, ids = index.search(query[None], k, allowed)
    brute = np.sqrt(((emb[allowed].astype(np.float64) - query) ** 2).sum(1))
    order = np.argsort(brute, kind="stable")[:min(k, 25)]
    assert ids.shape == (1, min(k, 25))
    assert np.array_equal(ids[0], allowed[order])
    np.testing.assert_allclose(dist[0], brute[order], rtol=1e-5)


def test_gallery_search_by_camera_returns_k_and_counts_the_unreachable(tmp_path):
    from attreid.search.index import unreached
    from attreid.search.query import GallerySearch

    index, emb, cams, query = _clustered_index(tmp_path)
    hits = GallerySearch(index).by_vector(query, k=20, cameras=[3])
    assert len(hits) == 20 and hits.unreached == 0
    assert all(h.entry.camera == 3 for h in hits)
    brute = np.sqrt(((emb.astype(np.float64) - query) ** 2).sum(1))
    brute[cams != 3] = np.inf
    assert [h.entry.id for h in hits] == np.argsort(brute, kind="stable")[:20].tolist()
    # an allowed id the index does not hold: every list is probed, the rest come back, and
    # the empty slot is counted, not dropped silently
    allowed = np.append(np.flatnonzero(cams == 3), 10_000)
    dist, ids = index.search(query[None], 26, allowed)
    assert unreached(ids) == 1 and sorted(ids[0][ids[0] >= 0]) == np.flatnonzero(cams == 3).tolist()


# --------------------------------------------------------------------------------------------
# 8: a copy of the query in the gallery is the query itself
# --------------------------------------------------------------------------------------------


def _custom_with_query_copies(synth_market, out):
    """A custom layout of ``synth_market`` without cameras whose gallery also holds a
    byte-identical copy of every query (``gal/copy_<name>``, same identity)."""
    import csv
    import shutil

    from helpers import make_custom_copy

    root = make_custom_copy(synth_market, out, [])
    with open(root / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    copies = []
    for row in rows:
        if row["split"] == "query":
            name = "gal/copy_" + row["image"].split("/")[-1]
            shutil.copy(root / row["image"], root / name)
            copies.append({**row, "image": name, "split": "gallery"})
    with open(root / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "pid", "split"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("image", "pid", "split")} for r in rows + copies)
    return root, rows + copies


def _hand_rank1_map(dist: np.ndarray, qids, gids, left_out: list[set[int]]):
    """Rank-1 and mAP by a loop: junk (-1) and each query's ``left_out`` removed."""
    rank1, aps = [], []
    for i in range(len(qids)):
        keep = [j for j in range(len(gids)) if gids[j] != -1 and j not in left_out[i]]
        order = sorted(keep, key=lambda j: (dist[i, j], j))
        match = [gids[j] == qids[i] for j in order]
        if not any(match):
            continue
        hits = np.flatnonzero(match)
        aps.append(np.mean([(n + 1) / (pos + 1) for n, pos in enumerate(hits)]))
        rank1.append(float(match[0]))
    return float(np.mean(rank1)), float(np.mean(aps)), len(aps)


def test_query_copies_are_left_out_of_their_own_ranking(tiny_checkpoint, synth_market,
                                                         tmp_path):
    from attreid.data.evalset import build_evaluation_set, query_copies
    from attreid.data.load import load_dataset
    from attreid.evaluation.evaluate import evaluate_checkpoint
    from attreid.inference.predictor import Predictor

    root, rows = _custom_with_query_copies(synth_market, tmp_path / "copies")
    data = build_evaluation_set(load_dataset(root, "custom"), "test")
    names = [r.path.name for r in data.gallery]
    copies = query_copies(data)
    assert copies.shape == (len(data.query), 1)
    assert [names[j] for j in copies[:, 0]] == ["copy_" + r.path.name for r in data.query]
    with pytest.warns(UserWarning, match=rf"{len(data.query)} gallery file\(s\) "
                      "byte-identical to a query"):
        result = evaluate_checkpoint(tiny_checkpoint, root, device="cpu",
                                     backend="torch-fp32", out=tmp_path / "eval")
    m = result.metrics
    assert m["setup"]["query_copies_excluded"] == len(data.query)
    predictor = Predictor(tiny_checkpoint, device="cpu")
    q = predictor.predict([r.path for r in data.query]).embeddings.astype(np.float64)
    g = predictor.predict([r.path for r in data.gallery]).embeddings.astype(np.float64)
    dist = np.sqrt(((q[:, None, :] - g[None, :, :]) ** 2).sum(-1))  # (Q, G)
    qids = [r.pid for r in data.query]
    gids = [r.pid for r in data.gallery]
    left_out = [{int(j)} for j in copies[:, 0]]
    rank1, mean_ap, valid = _hand_rank1_map(dist, qids, gids, left_out)
    assert m["rank1"] == pytest.approx(rank1, abs=1e-9)
    assert m["mAP"] == pytest.approx(mean_ap, abs=1e-6)
    assert m["num_valid_queries"] == valid
    # with the copies counted, as before: every query finds itself first
    rank1_in, map_in, _ = _hand_rank1_map(dist, qids, gids, [set() for _ in qids])
    assert rank1_in == 1.0 and map_in > mean_ap + 0.01
    # the ranked figure skips them too
    for qi, row in zip(result.ranked.query_index, result.ranked.gallery_index):
        assert copies[qi, 0] not in row


def test_reid_metrics_exclude_equals_removing_the_columns() -> None:
    from attreid.metrics import reid_metrics, reid_metrics_streamed

    rng = np.random.default_rng(8)
    dist = rng.random((12, 30))
    qids, gids = rng.integers(0, 4, 12), rng.integers(0, 4, 30)
    exclude = np.full((12, 2), -1)
    exclude[:, 0] = rng.integers(0, 30, 12)
    exclude[::3, 1] = (exclude[::3, 0] + 1) % 30
    got = reid_metrics(dist, qids, gids, protocol="seed", exclude=exclude)
    rank1, mean_ap, valid = _hand_rank1_map(dist, qids, gids,
                                            [set(r[r >= 0].tolist()) for r in exclude])
    assert got.rank(1) == pytest.approx(rank1) and got.mAP == pytest.approx(mean_ap)
    assert got.num_valid_queries == valid
    feats_q, feats_g = rng.normal(size=(12, 5)), rng.normal(size=(30, 5))
    full = reid_metrics(pairwise_distance(feats_q, feats_g), qids, gids, protocol="seed",
                        exclude=exclude, chunk_size=5)
    streamed = reid_metrics_streamed(
        feats_q, qids, lambda: [(feats_g[s:s + 7], gids[s:s + 7], None) for s in range(0, 30, 7)],
        protocol="seed", exclude=exclude, chunk_size=5)
    assert streamed.mAP == pytest.approx(full.mAP) and np.allclose(streamed.cmc, full.cmc)
