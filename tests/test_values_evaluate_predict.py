"""Values of evaluation and prediction against references written here (issue 21, item 10,
part A): distances, the re-ID metrics (a hand-written mAP / CMC, not attreid.metrics), test-time
flip averaging, the seeded random split, custom layouts, the predicted attribute codes, bf16
inference and the class names of a prediction.

Already value-tested elsewhere and not repeated here: ``evaluate`` with the default Euclidean
distance against ``reid_metrics`` (test_evaluate.py), a trained cosine checkpoint's default
distance (test_distance_consumers.py), ``Predictor(flip=True)`` against the Predictor's own
output on ``torch.flip``-ped tensors (test_predictor.py), ``schema.describe`` against a
hand-typed table (test_schema_by_hand.py) and the course CSV codes against ``features.npz``'s
labels (test_predict.py). ``Prediction`` has no ``describe`` method; its text view is
:meth:`Prediction.attributes`, tested here.

Tolerances: distances are float32 in attreid and float64 here; they differ by at most
1.5e-6 (measured on this AMD EPYC with ONEDNN_MAX_CPU_ISA unset, AVX2 and AVX512_CORE; values
up to 2.2), so DIST_TOL = 1e-5. Distances within one query's row lie as close as 2.7e-7 here, so
float32 and float64 could order two entries differently; the hand reference therefore resolves
every match / non-match pair closer than DIST_TOL both ways (matches first, matches last) and
attreid's metric must lie between the two (plus 1e-9 for summation order). Measured here: the
two resolutions differ by at most 4.1e-5 (Euclidean) and 2.4e-4 (cosine) in mAP, 0 in rank-k,
and attreid's numbers equal the plain float64 walk exactly (difference 0.0) on the three ISAs
above; a wrong distance or protocol moves mAP by more than 1e-3 (asserted where it matters).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_nearest_within, brute_force_distance
from PIL import Image, ImageOps

from attreid.evaluation.evaluate import evaluate_checkpoint
from attreid.inference.extraction import extract
from attreid.inference.predict import predict_dataset
from attreid.inference.predictor import Prediction, Predictor, make_prediction
from attreid.utils.checkpoint import load_checkpoint, save_checkpoint

# ---- hand-typed tables (not read from attreid.schema) --------------------------------------

TASK_ORDER = ["age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat",
              "gender", "upcolor", "downcolor"]
CLASS_NAMES = {
    "age": ["young", "teenager", "adult", "old"],
    "backpack": ["no", "yes"], "bag": ["no", "yes"], "handbag": ["no", "yes"],
    "clothes": ["dress", "pants"], "down": ["long", "short"], "up": ["long", "short"],
    "hair": ["short", "long"], "hat": ["no", "yes"], "gender": ["male", "female"],
    "upcolor": ["black", "white", "red", "purple", "yellow", "gray", "blue", "green",
                "multicolour"],
    "downcolor": ["black", "white", "pink", "purple", "yellow", "gray", "blue", "green",
                  "brown", "multicolour"],
}
BINARY = ["backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender"]
UP_COLUMNS = ["upblack", "upwhite", "upred", "uppurple", "upyellow", "upgray", "upblue",
              "upgreen"]
DOWN_COLUMNS = ["downblack", "downwhite", "downpink", "downpurple", "downyellow", "downgray",
                "downblue", "downgreen", "downbrown"]
DIST_TOL = 1e-5  # float32 distances vs float64 here: measured max 1.2e-6 (values up to ~2)


# ---- references written out here --------------------------------------------------------


def _hand_reid(dist, qids, gids, qcams=None, gcams=None, protocol="market",
               exclude_self=False, nudge: float = 0.0) -> dict:
    """mAP and CMC walked query by query: the kept gallery (market: junk -1 and same identity
    *and* camera removed; seed: nothing; all-vs-all: the query itself removed) sorted by
    distance (+ ``nudge`` for the matches: a near-tie resolved against them when > 0, for them
    when < 0), AP = mean over the matches of (matches so far / rank)."""
    aps, first_hits = [], []
    for i in range(len(qids)):
        keep = np.ones(len(gids), dtype=bool)
        if protocol == "market":
            keep &= gids != -1
            if qcams is not None:
                keep &= ~((gids == qids[i]) & (gcams == qcams[i]))
        if exclude_self:
            keep[i] = False
        kept = np.flatnonzero(keep)
        match = gids[kept] == qids[i]
        if not match.any():
            continue
        hits = match[np.argsort(dist[i, kept] + nudge * match, kind="stable")]
        ranks = np.flatnonzero(hits) + 1  # 1-based ranks of the matches
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        first_hits.append(ranks[0])
    first = np.array(first_hits)
    return {"mAP": float(np.mean(aps)), "rank1": float(np.mean(first <= 1)),
            "rank5": float(np.mean(first <= 5)), "rank10": float(np.mean(first <= 10))}


def _reference(dist, *args, **kwargs) -> tuple[dict, dict]:
    """:func:`_hand_reid` with near-ties (closer than DIST_TOL) resolved against and for the
    matches: the lowest and highest values float rounding could give (module docstring)."""
    return (_hand_reid(dist, *args, nudge=DIST_TOL, **kwargs),
            _hand_reid(dist, *args, nudge=-DIST_TOL, **kwargs))


def _assert_reid(metrics: dict, reference: tuple[dict, dict]) -> None:
    low, high = reference
    for key in low:
        assert low[key] - 1e-9 <= metrics[key] <= high[key] + 1e-9, (key, metrics[key], low,
                                                                     high)


def _ids_cams(paths) -> tuple[np.ndarray, np.ndarray]:
    """Identity and camera from Market-1501 file names (``0266_c1s2_...``, ``-1_c3s1_...``)."""
    ids = np.array([int(p.name.split("_")[0]) for p in paths])
    cams = np.array([int(p.name.split("_")[1][1]) for p in paths])
    return ids, cams


def _records(paths) -> list:
    """Unlabelled records of ``paths`` (what extract() embeds)."""
    from attreid.data.records import ImageRecord

    return [ImageRecord(p, None, None, None) for p in paths]


@torch.inference_mode()
def _hand_forward(predictor: Predictor, paths, mirror: bool) -> tuple[np.ndarray, dict]:
    """Embeddings and attribute logits of the model run here on each file, or on the file
    mirrored left-right with PIL (``ImageOps.mirror``) before preprocessing."""
    images = [Image.open(p).convert("RGB") for p in paths]
    if mirror:
        images = [ImageOps.mirror(im) for im in images]
    out = predictor.model.eval()(predictor.preprocess(images))
    return (out.embedding.float().numpy(),
            {k: v.float().numpy() for k, v in out.attribute_logits.items()})


def _hand_flip(predictor: Predictor, paths) -> tuple[np.ndarray, dict]:
    """The flip average by hand: the mean of the outputs of each image and its mirror."""
    e0, l0 = _hand_forward(predictor, paths, mirror=False)
    e1, l1 = _hand_forward(predictor, paths, mirror=True)
    return (e0 + e1) / 2, {k: (l0[k] + l1[k]) / 2 for k in l0}


def _hand_labels(logits: dict, row: int) -> dict[str, int]:
    """Class index per task of one image: a binary task is class 1 where its one logit > 0
    (sigmoid > 1/2), a multi-class task the largest logit."""
    out = {}
    for name in TASK_ORDER:
        value = logits[name][row].reshape(-1)
        out[name] = int(value[0] > 0) if name in BINARY else int(np.argmax(value))
    return out


def _with_distance(checkpoint: Path, distance: str, out: Path) -> Path:
    """A copy of ``checkpoint`` whose training config says ``loss.distance=distance``."""
    state = load_checkpoint(checkpoint)
    state["config"]["loss"]["distance"] = distance
    save_checkpoint(out, state)
    return out


# ---- module fixtures ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return Predictor(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def market(synth_market, predictor):
    """Query and gallery files of ``synth_market`` with identities, cameras and the plain and
    flip-averaged embeddings, all computed here."""
    query = sorted((synth_market / "query").glob("*.jpg"))
    gallery = sorted((synth_market / "bounding_box_test").glob("*.jpg"))
    plain, _ = _hand_forward(predictor, query + gallery, mirror=False)
    flipped, _ = _hand_flip(predictor, query + gallery)
    qids, qcams = _ids_cams(query)
    gids, gcams = _ids_cams(gallery)
    q = len(query)
    return {"query": query, "gallery": gallery, "qids": qids, "qcams": qcams, "gids": gids,
            "gcams": gcams, "plain": (plain[:q], plain[q:]), "flip": (flipped[:q], flipped[q:])}


@pytest.fixture(scope="module")
def cosine_copy(tiny_checkpoint, tmp_path_factory):
    """``tiny_checkpoint`` with ``loss.distance=cosine`` in its config (same weights)."""
    return _with_distance(tiny_checkpoint, "cosine",
                          tmp_path_factory.mktemp("cosine_copy") / "best.pt")


def _check_ranked(result, market, dist: np.ndarray) -> None:
    """The ranked figure's distances are the hand distances of the listed pairs, and each row
    lists the nearest kept gallery entries (near-ties within DIST_TOL either way)."""
    r = result.ranked
    qindex = {p: i for i, p in enumerate(market["query"])}
    gindex = {p: j for j, p in enumerate(market["gallery"])}
    for qpath, gpaths, shown in zip(r.query_paths, r.gallery_paths, r.distances):
        i, cols = qindex[qpath], [gindex[p] for p in gpaths]
        np.testing.assert_allclose(shown, dist[i, cols], rtol=0, atol=DIST_TOL)
        keep = (market["gids"] != -1) & ~((market["gids"] == market["qids"][i])
                                          & (market["gcams"] == market["qcams"][i]))
        kept = np.flatnonzero(keep)
        order = [int(np.flatnonzero(kept == c)[0]) for c in cols]
        assert_nearest_within(order, dist[i, kept], DIST_TOL)


# ---- evaluate: distances ------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["squared", "euclidean"])
def test_evaluate_distance_values(metric, tiny_checkpoint, synth_market, market):
    """``distance=squared|euclidean``: metrics equal the hand mAP / CMC on hand distances of
    embeddings computed here, and the ranked figure shows the hand distances (squared ones
    for squared: not their square roots). Mutation caught: pairwise_distance returning
    ``squared.sqrt_()`` for squared (the shown distances differ)."""
    result = evaluate_checkpoint(tiny_checkpoint, synth_market, distance=metric, device="cpu")
    dist = brute_force_distance(*market["plain"], metric)
    assert result.metrics["setup"]["distance"] == metric
    _assert_reid(result.metrics, _reference(dist, market["qids"], market["gids"],
                                            market["qcams"], market["gcams"]))
    _check_ranked(result, market, dist)


def test_squared_ranks_as_euclidean(tiny_checkpoint, synth_market):
    """Squared Euclidean is a monotone transform of Euclidean: the same metrics, the same
    ranked lists, and shown distances that are the Euclidean ones squared (measured: equal
    to the last bit; float32 sqrt could only turn two squared distances about 1 ulp apart
    into a tie broken by index). Mutation caught: squared returned as its square root."""
    sq = evaluate_checkpoint(tiny_checkpoint, synth_market, distance="squared", device="cpu")
    eu = evaluate_checkpoint(tiny_checkpoint, synth_market, distance="euclidean", device="cpu")
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        assert sq.metrics[key] == pytest.approx(eu.metrics[key], abs=1e-9), key
    np.testing.assert_array_equal(sq.ranked.gallery_index, eu.ranked.gallery_index)
    np.testing.assert_allclose(sq.ranked.distances, eu.ranked.distances ** 2, rtol=1e-5)


def test_evaluate_a_cosine_checkpoint_ranks_by_one_minus_the_normalised_dot(
        cosine_copy, synth_market, market):
    """A checkpoint whose config says cosine is evaluated with cosine by default: metrics equal
    the hand mAP on 1 - q.g / (|q| |g|), the figure shows those values. Mutations caught:
    Predictor.distance returning "euclidean" for a cosine checkpoint; pairwise_distance's
    cosine without the normalisation."""
    result = evaluate_checkpoint(cosine_copy, synth_market, device="cpu")
    dist = brute_force_distance(*market["plain"], "cosine")
    assert result.metrics["setup"]["distance"] == "cosine"
    reference = _reference(dist, market["qids"], market["gids"], market["qcams"],
                           market["gcams"])
    _assert_reid(result.metrics, reference)
    _check_ranked(result, market, dist)
    euclid = _hand_reid(brute_force_distance(*market["plain"], "euclidean"), market["qids"],
                        market["gids"], market["qcams"], market["gcams"])
    assert abs(euclid["mAP"] - reference[0]["mAP"]) > 1e-3  # Euclidean would be told apart


@pytest.mark.parametrize("recorded, expected", [("cosine", "cosine"), ("squared", "euclidean"),
                                                ("euclidean", "euclidean")])
def test_predictor_distance_is_the_checkpoints(recorded, expected, tiny_checkpoint, tmp_path):
    """Predictor.distance is the training distance (squared ranks as Euclidean). Mutation
    caught: returning "euclidean" whatever the checkpoint says."""
    ckpt = _with_distance(tiny_checkpoint, recorded, tmp_path / "best.pt")
    assert Predictor(ckpt, device="cpu").distance == expected


# ---- evaluate: protocols and splits -------------------------------------------------------

def test_seed_protocol_on_the_test_split(tiny_checkpoint, synth_market, market):
    """Protocol ``seed`` on split test: no camera filter and no junk removal (junk -1 and
    same-camera matches count), as the hand reference with nothing removed."""
    result = evaluate_checkpoint(tiny_checkpoint, synth_market, split="test", protocol="seed",
                                 device="cpu")
    dist = brute_force_distance(*market["plain"], "euclidean")
    reference = _reference(dist, market["qids"], market["gids"], protocol="seed")
    assert result.metrics["setup"]["protocol"] == "seed"
    _assert_reid(result.metrics, reference)
    market_ref = _hand_reid(dist, market["qids"], market["gids"], market["qcams"],
                            market["gcams"])
    assert abs(market_ref["mAP"] - reference[0]["mAP"]) > 1e-3  # the protocols differ here


def _hand_random_split(synth_market: Path, num_ids: int, seed: int) -> list[Path]:
    """The documented rule: ``num_ids`` of the sorted training identities chosen by
    ``numpy.random.default_rng(seed).choice(n, num_ids, replace=False)``; every image of
    those identities."""
    train = sorted((synth_market / "bounding_box_train").glob("*.jpg"))
    ids = sorted({int(p.name.split("_")[0]) for p in train})
    chosen = {ids[i] for i in np.random.default_rng(seed).choice(len(ids), num_ids,
                                                                 replace=False)}
    return [p for p in train if int(p.name.split("_")[0]) in chosen]


def test_random_split_is_the_seeded_draw(tiny_checkpoint, synth_market, predictor):
    """Split ``random``: the held-out images are those of the identities drawn by hand from
    the seed; metrics equal the hand all-vs-all reference (itself excluded, no camera
    filter); the same seed gives the same numbers, another seed other images. Mutation
    caught: random_id_split drawing with ``default_rng(seed + 1)``."""
    runs = {}
    for seed in (1, 2):
        val = _hand_random_split(synth_market, 3, seed)
        result = evaluate_checkpoint(tiny_checkpoint, synth_market, split="random", val_ids=3,
                                     split_seed=seed, device="cpu", num_visual_queries=1000)
        # every held-out image has a match, so the figure lists every query
        assert sorted(result.ranked.query_paths) == val, seed
        emb, _ = _hand_forward(predictor, val, mirror=False)
        ids, _ = _ids_cams(val)
        reference = _reference(brute_force_distance(emb, emb, "euclidean"), ids, ids,
                               protocol="seed", exclude_self=True)
        _assert_reid(result.metrics, reference)
        runs[seed] = (val, result.metrics)
    assert runs[1][0] != runs[2][0]  # the two seeds draw other identities here
    again = evaluate_checkpoint(tiny_checkpoint, synth_market, split="random", val_ids=3,
                                split_seed=1, device="cpu").metrics
    assert again == runs[1][1]


# ---- evaluate: test-time flip ---------------------------------------------------------------

def test_evaluate_with_flip_uses_the_mirror_average(tiny_checkpoint, synth_market, market,
                                                    predictor):
    """``flip=True``: the embeddings (extract, the path evaluate uses, and the Predictor) are
    the mean of those of each image and of the image mirrored with PIL, and the metrics are
    the hand reference on those means. Mutation caught: forward_tta returning only the
    unflipped embedding."""
    paths = market["query"] + market["gallery"]
    expected = np.concatenate(market["flip"])
    # float32 forward passes of other batch compositions: measured max 4e-7 (|values| <= 0.5)
    got = extract(predictor.model, _records(paths), predictor.transform_config,
                  predictor.device, flip=True).embeddings.numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    flip_predictor = Predictor(predictor.checkpoint, device="cpu", flip=True)
    np.testing.assert_allclose(flip_predictor.predict(paths[:40]).embeddings, expected[:40],
                               rtol=0, atol=1e-5)
    plain = np.concatenate(market["plain"])
    assert np.abs(expected - plain).max() > 1e-2  # mirroring changes the embeddings here

    result = evaluate_checkpoint(tiny_checkpoint, synth_market, flip=True, device="cpu")
    assert result.metrics["setup"]["flip"] is True
    reference = _reference(brute_force_distance(*market["flip"], "euclidean"), market["qids"],
                           market["gids"], market["qcams"], market["gcams"])
    _assert_reid(result.metrics, reference)
    _check_ranked(result, market, brute_force_distance(*market["flip"], "euclidean"))


# ---- custom layout ------------------------------------------------------------------------

def _read_labels_csv(root: Path) -> list[dict[str, str]]:
    with open(root / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def _column(rows: list[dict[str, str]], name: str) -> np.ndarray:
    return np.array([int(r[name]) for r in rows])


def test_evaluate_a_custom_layout(custom_runs):
    """The partly labelled custom copy (gender, age): re-ID metrics equal the hand reference
    on identities and cameras read from labels.csv here; gender and age accuracy on the
    labelled gallery images equal the hand count of argmax == the csv code - 1."""
    data, run = custom_runs["partial"]
    checkpoint = run / "best.pt"
    result = evaluate_checkpoint(checkpoint, data, device="cpu")
    rows = _read_labels_csv(data)
    query = [r for r in rows if r["split"] == "query"]
    gallery = [r for r in rows if r["split"] == "gallery"]
    pred = Predictor(checkpoint, device="cpu")
    q_emb, _ = _hand_forward(pred, [data / r["image"] for r in query], mirror=False)
    g_emb, g_logits = _hand_forward(pred, [data / r["image"] for r in gallery], mirror=False)
    reference = _reference(brute_force_distance(q_emb, g_emb, "euclidean"), _column(query, "pid"),
                           _column(gallery, "pid"), _column(query, "camid"),
                           _column(gallery, "camid"))
    assert result.metrics["setup"]["layout"] == "custom"
    _assert_reid(result.metrics, reference)
    labelled = [j for j, r in enumerate(gallery) if r["gender"] != ""]
    for task in ("gender", "age"):
        right = [_hand_labels(g_logits, j)[task] == int(gallery[j][task]) - 1 for j in labelled]
        assert result.metrics["accuracy"][task] == pytest.approx(np.mean(right), abs=1e-12)
    assert result.metrics["num_attribute_images"] == len(labelled)


def test_predict_a_custom_layout_with_flip(custom_runs, tmp_path):
    """``predict --flip`` on the custom copy: for a hand-picked query file, features.npz holds
    the hand flip-averaged embedding, gender / age labels = argmax of the hand flip-averaged
    logits (the other tasks -1, untrained) and their probabilities; every row's labels match
    too. Mutation caught: forward_tta without the flip average."""
    data, run = custom_runs["partial"]
    checkpoint = run / "best.pt"
    with pytest.warns(UserWarning, match="labels for age, gender only: no prediction for "
                      "backpack, bag, handbag, clothes, down, up, hair, hat, upcolor, downcolor"):
        files = predict_dataset(checkpoint, data, tmp_path, flip=True, device="cpu")
    saved = np.load(files.features)
    paths = [Path(p) for p in saved["paths"]]
    emb, logits = _hand_flip(Predictor(checkpoint, device="cpu"), paths)
    picked = paths.index(data / "qry" / sorted(p.name for p in (data / "qry").iterdir())[3])
    np.testing.assert_allclose(saved["embeddings"][picked], emb[picked], rtol=0, atol=1e-5)
    for i in range(len(paths)):
        hand = _hand_labels(logits, i)
        want = [hand[t] if t in ("age", "gender") else -1 for t in TASK_ORDER]
        assert saved["labels"][i].tolist() == want, paths[i]
    gender = 1 / (1 + np.exp(-logits["gender"][picked, 0]))
    np.testing.assert_allclose(saved["prob_gender"][picked], [1 - gender, gender], atol=1e-6)
    age = np.exp(logits["age"][picked]) / np.exp(logits["age"][picked]).sum()
    np.testing.assert_allclose(saved["prob_age"][picked], age, atol=1e-6)


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    from attreid.data.synth import generate

    root = tmp_path_factory.mktemp("course_values") / "data"
    generate(root, ids=8, seed=3, layout="course")
    return root


def test_predict_course_codes_with_flip(course, tiny_checkpoint, predictor, tmp_path):
    """classification_test.csv with ``flip``: the row of a hand-picked test file holds the
    dataset's codes of argmax of the hand flip-averaged logits (age 1-4; binary 1/2 = class
    0/1; the colour chosen set to 2, the rest 1, multicolour all 1). The file is one whose
    labels flipping changes, so dropping the average turns this red (mutation caught:
    forward_tta returning the unflipped logits)."""
    with pytest.warns(UserWarning, match="excluded 2 byte-identical duplicate"):
        files = predict_dataset(tiny_checkpoint, course, tmp_path, flip=True, device="cpu",
                                top_k=5)
    rows = {r["id"]: r for r in csv.DictReader(files.classification.open())}
    names = sorted(p.name for p in (course / "test").glob("*.jpg") if "(" not in p.name)
    _, flip_logits = _hand_flip(predictor, [course / "test" / n for n in names])
    _, plain_logits = _hand_forward(predictor, [course / "test" / n for n in names], False)
    changed = [i for i in range(len(names))
               if _hand_labels(flip_logits, i) != _hand_labels(plain_logits, i)]
    assert changed, "no test image whose labels flipping changes"
    for i in (changed[0], 0):
        lab = _hand_labels(flip_logits, i)
        want = {"age": str(lab["age"] + 1)}
        want.update({name: str(lab[name] + 1) for name in BINARY})
        want.update({c: "2" if j == lab["upcolor"] else "1" for j, c in enumerate(UP_COLUMNS)})
        want.update({c: "2" if j == lab["downcolor"] else "1"
                     for j, c in enumerate(DOWN_COLUMNS)})
        assert {k: rows[names[i]][k] for k in want} == want, names[i]


# ---- Predictor precision ----------------------------------------------------------------

def test_predictor_bf16_on_cpu(tiny_checkpoint, market):
    """``amp="bf16"``: the Predictor reports it, its embeddings are those of the model run
    here under CPU bf16 autocast, and within 5% (of each row's norm) of float32. Measured
    spread bf16 vs float32 on this AMD EPYC: max 1.8% of the row norm with native bf16
    (ONEDNN_MAX_CPU_ISA unset, AVX512_CORE_BF16), 1.6% under AVX2, 1.8% under AVX512_CORE;
    max absolute 4.6e-3 for values up to 0.46. Mutation caught: autocast_context ignoring
    bf16 (float32 then differs from the hand bf16 run by up to 4e-3)."""
    paths = market["gallery"][:32]
    bf16 = Predictor(tiny_checkpoint, device="cpu", amp="bf16", batch_size=32)
    assert bf16.amp == "bf16"
    got = bf16.predict(paths).embeddings
    x = bf16.preprocess(paths)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        hand = bf16.model.eval()(x).embedding.float().numpy()
    # same kernels on the same batch: measured identical; 1e-6 for a kernel's summation order
    np.testing.assert_allclose(got, hand, rtol=0, atol=1e-6)
    fp32 = np.concatenate(market["plain"])[len(market["query"]):][:32]
    spread = np.linalg.norm(got - fp32, axis=1) / np.linalg.norm(fp32, axis=1)
    assert spread.max() < 0.05, spread.max()
    assert np.abs(hand - fp32).max() > 1e-4  # bf16 really ran (float32 would be ~1e-7 off)


@pytest.mark.parametrize("amp, message", [
    ("fp32", "amp='fp32': expected one of auto, none, bf16, fp16 (none is float32)"),
    ("fp16", "amp=fp16 needs a CUDA device; use bf16 on CPU"),
])
def test_predictor_refuses_an_invalid_amp(amp, message, tiny_checkpoint):
    """An unknown amp, or fp16 on the CPU, raises a ValueError naming it when the Predictor is
    made, before any image is read."""
    with pytest.raises(ValueError) as info:
        Predictor(tiny_checkpoint, device="cpu", amp=amp)
    assert str(info.value) == message


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "none")])
def test_predictor_auto_amp_is_what_training_would_pick(native, expected, tiny_checkpoint,
                                                        monkeypatch):
    """``amp="auto"`` (train.amp's default in the demo preset) resolves like training's: bf16
    on a CPU with native bf16, float32 (``none``) elsewhere."""
    from attreid.inference import extraction

    monkeypatch.setattr(extraction, "cpu_bf16_native", lambda: native)
    assert Predictor(tiny_checkpoint, device="cpu", amp="auto").amp == expected


# ---- class names of a prediction --------------------------------------------------------

def test_prediction_attributes_have_the_hand_typed_class_names():
    """Prediction.attributes of hand-made label rows (and of make_prediction from hand
    logits) are the hand-typed class names; tasks not trained or unknown (-1) are left out.
    Mutation caught: two class names swapped in the schema (e.g. gender female/male)."""
    labels = np.array([[3, 1, 0, 1, 0, 1, 0, 1, 0, 1, 8, 9],
                       [0, 0, 1, 0, 1, 0, 1, 0, 1, 0, 2, 8],
                       [1, 1, 1, 1, 1, 1, 1, 1, 1, -1, 6, 2]])
    pred = Prediction(np.zeros((3, 4), np.float32), {}, labels)
    assert pred.attributes(0) == {
        "age": "old", "backpack": "yes", "bag": "no", "handbag": "yes", "clothes": "dress",
        "down": "short", "up": "long", "hair": "long", "hat": "no", "gender": "female",
        "upcolor": "multicolour", "downcolor": "multicolour"}
    assert pred.attributes(1) == {
        "age": "young", "backpack": "no", "bag": "yes", "handbag": "no", "clothes": "pants",
        "down": "long", "up": "short", "hair": "short", "hat": "yes", "gender": "male",
        "upcolor": "red", "downcolor": "brown"}
    assert pred.attributes(2) == {
        "age": "teenager", "backpack": "yes", "bag": "yes", "handbag": "yes",
        "clothes": "pants", "down": "short", "up": "short", "hair": "long", "hat": "yes",
        "upcolor": "blue", "downcolor": "pink"}  # gender -1: unknown, left out
    partial = Prediction(np.zeros((3, 4), np.float32), {}, labels,
                         trained_tasks=("age", "gender"))
    assert partial.attributes(1) == {"age": "young", "gender": "male"}

    # from logits: binary class 1 where the logit > 0, else the largest logit
    logits = {name: torch.full((1, 1), -2.0) for name in BINARY}
    logits["gender"] = torch.tensor([[0.5]])
    logits["age"] = torch.tensor([[0.1, 0.2, 3.0, -1.0]])
    logits["upcolor"] = torch.tensor([[0.0] * 4 + [2.0] + [0.0] * 4])
    logits["downcolor"] = torch.tensor([[0.0] * 5 + [1.0] + [0.0] * 4])
    made = make_prediction(np.zeros((1, 4), np.float32), logits)
    assert made.attributes(0) == {
        "age": "adult", "backpack": "no", "bag": "no", "handbag": "no", "clothes": "dress",
        "down": "long", "up": "long", "hair": "short", "hat": "no", "gender": "female",
        "upcolor": "yellow", "downcolor": "gray"}
    assert CLASS_NAMES["gender"][made.labels[0, 9]] == "female"
