import json
import math

import numpy as np
import pytest
from helpers import make_course
from PIL import Image

from attreid.data.load import load_dataset
from attreid.data.records import JUNK_ID, attribute_matrix
from attreid.data.splits import random_id_split
from attreid.evaluation import plots
from attreid.evaluation.evaluate import evaluate_checkpoint
from attreid.evaluation.report import table_rows
from attreid.inference.predictor import Predictor
from attreid.metrics import attribute_metrics, pairwise_distance, reid_metrics
from attreid.metrics.reranking import rerank_dense
from attreid.schema import TASK_NAMES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REID_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")


def _fractions(metrics: dict) -> list[float]:
    """Every metric value that is a fraction (counts and setup excluded), flattened."""
    values = []
    for key, value in metrics.items():
        if key in ("setup", "majority_gap", "majority_of") or key.startswith("num_"):
            continue
        if isinstance(value, dict):
            values += _fractions(value)
        elif value is not None:
            values.append(value)
    return values


@pytest.fixture(scope="module")
def market_result(synth_market, tiny_checkpoint):
    return evaluate_checkpoint(tiny_checkpoint, synth_market, device="cpu", batch_size=64)


def test_market_keys_and_ranges(market_result):
    m = market_result.metrics
    for key in (*REID_KEYS, "mean_accuracy", "mA", "mean_majority"):
        assert key in m
    assert set(m["accuracy"]) == set(m["majority"]) == set(TASK_NAMES)
    assert set(m["instance"]) == {"accuracy", "precision", "recall", "f1"}
    assert m["setup"]["protocol"] == "market" and not m["setup"]["all_vs_all"]
    assert "reranked" not in m
    assert all(0.0 <= v <= 1.0 for v in _fractions(m))
    assert all(-1.0 <= g["low"] <= g["high"] <= 1.0 for g in m["majority_gap"].values())
    json.dumps(m)  # JSON-ready
    header, rows = table_rows({"model": m})  # the study-style table reads it
    assert header == ["task", "model", "majority", "vs majority (95 % CI)"]
    assert rows[-2][0] == "mAP"


def test_market_equals_predictor_and_metrics(market_result, synth_market, tiny_checkpoint):
    ds = load_dataset(synth_market)
    predictor = Predictor(tiny_checkpoint, device="cpu", batch_size=64)
    query = predictor.predict([r.path for r in ds.query])
    gallery = predictor.predict([r.path for r in ds.gallery])
    ids = lambda recs: np.array([r.pid for r in recs])  # noqa: E731
    cams = lambda recs: np.array([r.camid for r in recs])  # noqa: E731
    reid = reid_metrics(pairwise_distance(query.embeddings, gallery.embeddings),
                        ids(ds.query), ids(ds.gallery), cams(ds.query), cams(ds.gallery),
                        protocol="market")
    m = market_result.metrics
    for key, value in reid.as_dict().items():
        assert m[key] == pytest.approx(value, abs=1e-6), key
    np.testing.assert_allclose(market_result.cmc["plain"], reid.cmc, atol=1e-6)
    # attributes: the gallery images with attributes (identities > 0)
    keep = [i for i, r in enumerate(ds.gallery) if r.attributes is not None]
    assert keep and all(ds.gallery[i].pid > 0 for i in keep)
    attrs = attribute_metrics(gallery.labels[keep], attribute_matrix([ds.gallery[i]
                                                                      for i in keep]))
    assert m["num_attribute_images"] == len(keep)
    assert m["mean_accuracy"] == pytest.approx(attrs.mean_accuracy)
    assert m["mA"] == pytest.approx(attrs.mA)


def test_ranked_queries_follow_the_protocol(market_result, synth_market):
    ds = load_dataset(synth_market)
    r = market_result.ranked
    assert r.gallery_index.shape == r.correct.shape == r.distances.shape == (8, 10)
    assert (np.diff(r.distances, axis=1) >= 0).all()
    for qi, row, correct in zip(r.query_index, r.gallery_index, r.correct):
        q = ds.query[qi]
        for gi, ok in zip(row, correct):
            g = ds.gallery[gi]
            assert g.pid != JUNK_ID
            assert not (g.pid == q.pid and g.camid == q.camid)
            assert ok == (g.pid == q.pid)


def test_random_split_all_vs_all(synth_market, tiny_checkpoint):
    result = evaluate_checkpoint(tiny_checkpoint, synth_market, split="random", val_ids=3,
                                 split_seed=1, device="cpu", num_visual_queries=4)
    m = result.metrics
    _, val = random_id_split(load_dataset(synth_market).train, 3, seed=1)
    assert m["setup"]["protocol"] == "seed" and m["setup"]["all_vs_all"]
    assert m["setup"]["num_query"] == m["setup"]["num_gallery"] == len(val)
    assert m["num_attribute_images"] == len(val)
    assert all(0.0 <= v <= 1.0 for v in _fractions(m))
    # the values: every held-out image against all the others, no camera filter, computed here
    emb = Predictor(tiny_checkpoint, device="cpu").predict([r.path for r in val])
    ids = np.array([r.pid for r in val])
    ref = reid_metrics(pairwise_distance(emb.embeddings, emb.embeddings), ids, ids,
                       protocol="seed", exclude_self=True)
    for key, value in ref.as_dict().items():
        assert m[key] == pytest.approx(value, abs=1e-6), key
    attrs = attribute_metrics(emb.labels, attribute_matrix(val))
    assert m["mean_accuracy"] == pytest.approx(attrs.mean_accuracy)
    r = result.ranked
    assert len(r.query_index) == 4
    assert all(qi not in row for qi, row in zip(r.query_index, r.gallery_index))  # no self


def test_rerank_and_files(synth_market, tiny_checkpoint, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_checkpoint(tiny_checkpoint, synth_market, rerank=True, out=out,
                                 device="cpu", num_visual_queries=3)
    m = result.metrics
    assert set(REID_KEYS) <= set(m["reranked"])
    # the values: the dense k-reciprocal re-ranking (the textbook formulation, written apart
    # from the memory-bounded one evaluate uses) on the Predictor's embeddings, then reid_metrics
    ds = load_dataset(synth_market)
    predictor = Predictor(tiny_checkpoint, device="cpu")
    q = predictor.predict([r.path for r in ds.query]).embeddings
    g = predictor.predict([r.path for r in ds.gallery]).embeddings
    dense = rerank_dense(q, g, k1=20, k2=6, lambda_value=0.3)
    ids = lambda recs: np.array([r.pid for r in recs])  # noqa: E731
    cams = lambda recs: np.array([r.camid for r in recs])  # noqa: E731
    ref = reid_metrics(dense, ids(ds.query), ids(ds.gallery), cams(ds.query), cams(ds.gallery),
                       protocol="market")
    for key, value in ref.as_dict().items():
        assert m["reranked"][key] == pytest.approx(value, abs=1e-6), key
    assert set(result.cmc) == {"plain", "re-ranked"}
    assert m["setup"]["rerank"] == {"k1": 20, "k2": 6, "lambda_value": 0.3}
    assert json.loads((out / "metrics.json").read_text()) == m
    names = {p.name for p in result.files}
    assert names == {"metrics.json", "cmc.png", "attributes.png", "ranked.png"}
    for name in ("cmc.png", "attributes.png", "ranked.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    with Image.open(out / "ranked.png") as img:
        width, height = img.size
    k = result.ranked.correct.shape[1]
    assert (k, len(result.ranked.query_index)) == (10, 3)
    # 11 columns of 1:2 crops over 3 rows: wider than tall, room for every crop
    assert width >= (k + 1) * plots.CROP_SIZE[0] and height >= 3 * plots.CROP_SIZE[1]
    assert 1.5 < width / height < 3.5


@pytest.mark.filterwarnings("ignore:.*byte-identical duplicate")
def test_course_test_split_is_a_clear_error(tmp_path, tiny_checkpoint):
    root = make_course(tmp_path / "course")
    with pytest.raises(ValueError, match="unlabelled.*'study' or 'random'.*attreid predict"):
        evaluate_checkpoint(tiny_checkpoint, root, split="test", device="cpu")


@pytest.mark.filterwarnings("ignore:.*byte-identical duplicate")
def test_course_study_split(tmp_path, tiny_checkpoint):
    root = make_course(tmp_path / "course")
    result = evaluate_checkpoint(tiny_checkpoint, root, split="study", device="cpu",
                                 out=tmp_path / "out")
    m = result.metrics
    assert m["setup"]["num_query"] == 8 and m["setup"]["protocol"] == "seed"
    # every identity validates, no train identity is left: the evaluated labels' own majority
    assert m["majority_of"] == "evaluated"
    assert m["mean_majority"] == pytest.approx(np.mean([g["majority"] for g in
                                                        m["majority_gap"].values()]))
    assert (tmp_path / "out" / "ranked.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("kwargs, match", [
    (dict(split="val"), "split"), (dict(protocol="cuhk"), "protocol"),
    (dict(distance="l1"), "distance")])
def test_bad_arguments(synth_market, tiny_checkpoint, kwargs, match):
    with pytest.raises(ValueError, match=match):
        evaluate_checkpoint(tiny_checkpoint, synth_market, device="cpu", **kwargs)


def test_plot_grid_size_scales_with_rows_and_columns(synth_market, tmp_path):
    paths = sorted((synth_market / "bounding_box_test").glob("*.jpg"))[:12]
    sizes = {}
    for v, k in ((2, 5), (4, 5), (2, 10)):
        correct = np.zeros((v, k), dtype=bool)
        correct[:, 0] = True
        out = plots.plot_ranked_gallery(paths[:v], [paths[1:k + 1]] * v, correct,
                                        tmp_path / f"{v}x{k}.png", np.ones((v, k)))
        with Image.open(out) as img:
            sizes[v, k] = img.size
    assert sizes[4, 5][0] == sizes[2, 5][0] and 1.6 < sizes[4, 5][1] / sizes[2, 5][1] < 2.0
    assert sizes[2, 10][1] == sizes[2, 5][1] and 1.5 < sizes[2, 10][0] / sizes[2, 5][0] < 1.9
    with pytest.raises(ValueError, match="correct"):
        plots.plot_ranked_gallery(paths[:2], [paths[:3]] * 2, np.ones((3, 3), bool),
                                  tmp_path / "bad.png")


def test_plot_cmc_and_attributes(tmp_path):
    cmc = plots.plot_cmc({"plain": np.linspace(0.5, 1, 50), "re-ranked": np.ones(30)},
                         tmp_path / "cmc.png")
    accuracy = {"age": 0.8, "hat": math.nan, "mean": 0.8}
    bars = plots.plot_attribute_accuracy(accuracy, {"age": 0.7, "hat": None, "mean": 0.7},
                                         tmp_path / "attr.png")
    for path in (cmc, bars):
        assert path.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError):
        plots.plot_cmc({}, tmp_path / "empty.png")


def test_gallery_streamed_to_a_store_gives_the_in_memory_numbers(market_result, synth_market,
                                                                  tiny_checkpoint, tmp_path):
    """evaluate_checkpoint(store=...) (galleries beyond memory) equals the in-memory path: every
    re-ID metric, the CMC and every attribute metric; the store holds the whole gallery."""
    from attreid.inference.features import FeatureStore

    streamed = evaluate_checkpoint(tiny_checkpoint, synth_market, device="cpu", batch_size=64,
                                   store=tmp_path / "gallery", out=tmp_path / "eval")
    m, ref = streamed.metrics, market_result.metrics
    for key in REID_KEYS:
        assert m[key] == pytest.approx(ref[key], abs=1e-6), key
    np.testing.assert_allclose(streamed.cmc["plain"], market_result.cmc["plain"], atol=1e-6)
    assert m["accuracy"] == ref["accuracy"] and m["mA"] == pytest.approx(ref["mA"])
    assert m["instance"] == pytest.approx(ref["instance"])
    assert m["setup"]["store"] == str(tmp_path / "gallery")
    assert len(FeatureStore.open(tmp_path / "gallery")) == m["setup"]["num_gallery"]
    assert {p.name for p in streamed.files} == {"metrics.json", "cmc.png", "attributes.png"}
    with pytest.raises(ValueError, match="re-ranking needs the whole distance matrix"):
        evaluate_checkpoint(tiny_checkpoint, synth_market, device="cpu", rerank=True,
                            store=tmp_path / "gallery")
