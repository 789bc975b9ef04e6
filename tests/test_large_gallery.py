"""Galleries beyond memory: the sharded feature store, streamed evaluation and the streamed
index build, each checked on tiny data against a float64 brute force or against the in-memory
path fed the same embeddings (exact equality only where no CPU's rounding can change it)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import brute_force_distance
from PIL import Image

from attreid.inference.features import (
    EMBEDDINGS,
    FeatureStore,
    FeatureStoreError,
    FeatureWriter,
    ImageBatch,
    extract_to_store,
    probability_matrix,
    reid_metrics_on_store,
    split_probabilities,
    store_blocks,
)
from attreid.metrics import reid_metrics, reid_metrics_streamed
from attreid.schema import TASKS

P = sum(t.num_classes for t in TASKS)


def _probabilities(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    out = {}
    for task in TASKS:
        raw = rng.random((n, task.num_classes)).astype(np.float32) + 0.01
        out[task.name] = raw / raw.sum(1, keepdims=True)
    return out


def _gallery(seed: int = 0, n: int = 101, dim: int = 6, values: str = "normal") -> dict:
    """Features, identities with junk (-1) and distractors (0), cameras, paths, probabilities.

    ``values``: ``"normal"`` (Gaussian float32), ``"integer"`` (0, 1 or 2: many exact ties) or
    ``"quarters"`` (multiples of 1/4 in [-3, 3]). Integer and quarter features keep every
    float32 distance exact: squares and sums of multiples of 1/16 below 2^20 are exact in any
    order, on any CPU, and sqrt is correctly rounded."""
    rng = np.random.default_rng(seed)
    if values == "normal":
        emb = rng.standard_normal((n, dim))
    else:
        emb = rng.integers(0, 3, (n, dim)) if values == "integer" else \
            rng.integers(-12, 13, (n, dim)) / 4
    ids = rng.choice(np.array([-1, 0, 1, 2, 3, 4, 5, 6, 7]), size=n)
    cams = rng.integers(1, 4, size=n)
    paths = [f"/g/{max(int(i), 0):04d}_c{c}s1_{k:06d}_00.jpg" for k, (i, c) in
             enumerate(zip(ids, cams))]
    return {"emb": emb.astype(np.float32), "ids": ids, "cams": cams, "paths": paths,
            "probs": _probabilities(rng, n), "values": values}


def _write(root: Path, g: dict, shard_size: int, adds: tuple[int, ...] = (5, 13, 1)
           ) -> FeatureStore:
    """Write ``g`` in adds of varying sizes (then the rest) to a store."""
    bounds = np.cumsum((0, *adds))
    bounds = [int(b) for b in bounds if b < len(g["ids"])] + [len(g["ids"])]
    with FeatureWriter(root, shard_size=shard_size, info={"metric": "euclidean"}) as writer:
        for lo, hi in itertools.pairwise(bounds):
            writer.add(g["emb"][lo:hi], g["paths"][lo:hi], ids=g["ids"][lo:hi],
                       cams=g["cams"][lo:hi],
                       probabilities=probability_matrix(g["probs"])[lo:hi])
    return FeatureStore.open(root)


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


def test_store_round_trip_in_shards_with_a_partial_last_one(tmp_path):
    g = _gallery(n=40)
    store = _write(tmp_path / "s", g, shard_size=7)
    assert len(store) == 40 and store.dim == 6 and store.shard_rows == [7] * 5 + [5]
    assert store.fields == [EMBEDDINGS, "ids", "cams", "probabilities"]
    assert sorted(p.name for p in (tmp_path / "s").glob("embeddings-*.npy")) == \
        [f"embeddings-{i:05d}.npy" for i in range(6)]
    chunks = list(store.chunks([EMBEDDINGS, "ids"], chunk_size=3, paths=True))
    assert all(c.stop - c.start <= 3 for c in chunks)
    assert all(c.start // 7 == (c.stop - 1) // 7 for c in chunks)  # never straddle a shard
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    assert np.array_equal(np.concatenate([c.arrays[EMBEDDINGS] for c in chunks]), g["emb"])
    assert np.array_equal(np.concatenate([c.arrays["ids"] for c in chunks]), g["ids"])
    assert [p for c in chunks for p in c.paths] == g["paths"]
    assert isinstance(chunks[0].arrays[EMBEDDINGS], np.memmap)
    rows = np.array([39, 0, 8, 7, 21, 8])
    assert np.array_equal(store.take(EMBEDDINGS, rows), g["emb"][rows])
    assert np.array_equal(store.column("cams"), g["cams"])
    probs = split_probabilities(store.column("probabilities"))
    for task in TASKS:
        assert np.array_equal(probs[task.name], g["probs"][task.name])
    assert store.info == {"metric": "euclidean"}


def test_store_writes_nothing_it_cannot_finish(tmp_path):
    g = _gallery(n=20)
    with pytest.raises(RuntimeError, match="boom"), \
            FeatureWriter(tmp_path / "s", shard_size=4) as writer:
        writer.add(g["emb"][:10], ids=g["ids"][:10])
        raise RuntimeError("boom")
    assert not (tmp_path / "s").exists()
    writer = FeatureWriter(tmp_path / "t", shard_size=4)
    writer.add(g["emb"][:10])  # two shards written, no manifest yet
    with pytest.raises(FeatureStoreError, match="manifest.json not found"):
        FeatureStore.open(tmp_path / "t")
    assert len(writer.close()) == 10
    assert not list((tmp_path / "t").glob(".*.tmp"))


def test_writer_rejects_changing_fields_and_an_existing_folder(tmp_path):
    g = _gallery(n=10)
    writer = FeatureWriter(tmp_path / "s", shard_size=4)
    writer.add(g["emb"][:5], ids=g["ids"][:5])  # one shard written
    with pytest.raises(ValueError, match="every add"):
        writer.add(g["emb"][3:6])
    with pytest.raises(ValueError, match="ids: expected shape"):
        writer.add(g["emb"][3:6], ids=g["ids"][3:5])
    with pytest.raises(FeatureStoreError, match="not an empty folder"):
        FeatureWriter(tmp_path / "s")


def _corrupt_cases(root: Path) -> list[tuple[str, str]]:
    return [("manifest.json", "corrupt manifest"), ("embeddings-00001.npy", "cannot read"),
            ("ids-00002.npy", "shape"), ("paths-00000.txt", "paths, the shard has"),
            ("cams-00001.npy", "not found")]


@pytest.mark.parametrize("case", range(5))
def test_a_damaged_store_is_refused_naming_the_file(tmp_path, case):
    root = tmp_path / "s"
    _write(root, _gallery(n=20), shard_size=7)
    name, message = _corrupt_cases(root)[case]
    path = root / name
    if name == "manifest.json":
        path.write_text(path.read_text()[:30])
    elif name.startswith("embeddings"):
        path.write_bytes(path.read_bytes()[:-16])  # truncated
    elif name.startswith("ids"):
        np.save(path, np.zeros(5, np.int64))  # the manifest says 6 rows
    elif name.startswith("paths"):
        path.write_text("only one line\n")
    else:
        path.unlink()
        message = "cannot read shard"
    with pytest.raises(FeatureStoreError, match=message) as info:
        FeatureStore.open(root)
    assert name in str(info.value)


def test_manifest_count_must_match_the_shards(tmp_path):
    root = tmp_path / "s"
    _write(root, _gallery(n=20), shard_size=7)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["count"] = 21
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureStoreError, match="manifest.json: shards hold 20 rows"):
        FeatureStore.open(root)


# --------------------------------------------------------------------------------------------
# Streamed evaluation
# --------------------------------------------------------------------------------------------


def _queries(g: dict, seed: int, q: int = 23) -> dict:
    """Gallery rows plus noise (none for integer features, in steps of 1/4 for quarters)."""
    rng = np.random.default_rng(seed + 100)
    rows = rng.choice(len(g["emb"]), q)
    noise = 0.5 * rng.standard_normal((q, g["emb"].shape[1]))
    if g["values"] != "normal":
        noise = 0 if g["values"] == "integer" else np.round(noise * 4) / 4
    ids = rng.choice(np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]), size=q)  # 8, 9: no match
    return {"emb": np.asarray(g["emb"][rows] + noise, np.float32), "ids": ids,
            "cams": rng.integers(1, 4, size=q)}


# Float32 distances of Gaussian features differ from brute_force_distance's by at most 8.8e-7
# (measured on an AMD EPYC with ONEDNN_MAX_CPU_ISA default, AVX2 and AVX512_CORE and
# MKL_ENABLE_INSTRUCTIONS to match: the same there, for one (Q, G) product and for blocks);
# 1e-5 is 11x that, for CPUs that round otherwise (Intel AMX).
FLOAT32_SPREAD = 1e-5


def _assert_separated(dist: np.ndarray, qids, gids, qcams=None, gcams=None,
                      tol: float = FLOAT32_SPREAD) -> None:
    """Market protocol: no scored match of a query lies within ``tol`` of a scored non-match
    of it, so no rounding within ``tol`` can change CMC, mAP or mINP."""
    for i in range(len(qids)):
        junk = gids == -1
        if qcams is not None:
            junk = junk | ((gids == qids[i]) & (gcams == qcams[i]))
        match = (gids == qids[i]) & ~junk
        gaps = np.abs(dist[i, match][:, None] - dist[i, ~match & ~junk][None, :])
        assert gaps.size == 0 or gaps.min() > tol, (i, gaps.min())


def _assert_same(got, expected) -> None:
    assert np.array_equal(got.cmc, expected.cmc)
    assert got.mAP == expected.mAP and got.mINP == expected.mINP
    assert got.num_valid_queries == expected.num_valid_queries


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("values, metric", [("integer", "squared"), ("quarters", "euclidean"),
                                            ("normal", "euclidean")])
def test_streamed_market_metrics_equal_brute_force(tmp_path, seed, values, metric):
    """reid_metrics_on_store over 15 shards (the last of 3 rows), read in blocks, equals
    reid_metrics on float64 brute-force distances exactly, with and without cameras.

    Exact on any CPU: integer and quarter features give exact float32 distances (ties equal
    in both matrices, broken by gallery index in both); for Gaussian features the test
    asserts that no match / non-match pair of a query lies within FLOAT32_SPREAD, beyond
    which no float32 rounding reorders what the metrics count.

    Mutations caught: store_blocks dropping the last block; a block's embeddings reversed
    against its ids."""
    g = _gallery(seed, values=values)
    q = _queries(g, seed)
    store = _write(tmp_path / "s", g, shard_size=7)
    dist = brute_force_distance(q["emb"], g["emb"], metric)
    if values == "normal":
        _assert_separated(dist, q["ids"], g["ids"], q["cams"], g["cams"])
        _assert_separated(dist, q["ids"], g["ids"])
    got = reid_metrics_on_store(q["emb"], q["ids"], store, q["cams"], metric=metric,
                                max_rank=20, chunk_size=4, block_size=3)
    expected = reid_metrics(dist, q["ids"], g["ids"], q["cams"], g["cams"], max_rank=20)
    assert 0 < expected.num_valid_queries < expected.num_queries == 23  # 8, 9: no match
    _assert_same(got, expected)
    no_cams = reid_metrics_on_store(q["emb"], q["ids"], store, metric=metric, chunk_size=5)
    _assert_same(no_cams, reid_metrics(dist, q["ids"], g["ids"]))


def test_streamed_all_vs_all_equals_exclude_self(tmp_path):
    """The seed protocol, all against all, each query's own entry left out: equal to
    reid_metrics on float64 brute-force distances (quarter features: exact on any CPU)."""
    g = _gallery(4, n=60, values="quarters")
    store = _write(tmp_path / "s", g, shard_size=9)
    dist = brute_force_distance(g["emb"], g["emb"], "euclidean")
    expected = reid_metrics(dist, g["ids"], g["ids"], protocol="seed", exclude_self=True)
    got = reid_metrics_streamed(g["emb"], g["ids"], store_blocks(store, cams=None),
                                protocol="seed", chunk_size=7, exclude_self=True)
    _assert_same(got, expected)


def test_streamed_metrics_read_the_gallery_in_blocks_only(tmp_path):
    g = _gallery(1, n=50)
    q = _queries(g, 1, q=10)
    store = _write(tmp_path / "s", g, shard_size=8)
    blocks = store_blocks(store, block_size=5)
    passes, sizes = [0], []

    def counted():
        passes[0] += 1
        for block in blocks():
            sizes.append(len(block[0]))
            yield block

    reid_metrics_streamed(q["emb"], q["ids"], counted, q["cams"], chunk_size=4)
    assert passes[0] == 2 * 3  # two passes per chunk of queries
    assert max(sizes) == 5 and sum(sizes) == 6 * 50


def test_streamed_metrics_refuse_a_gallery_that_changes_between_passes():
    g = _gallery(2, n=30)
    q = _queries(g, 2, q=5)
    calls = [0]

    def shrinking():
        calls[0] += 1
        n = 30 if calls[0] == 1 else 29
        yield g["emb"][:n], g["ids"][:n], None

    with pytest.raises(ValueError, match="gave 29 rows, 30 in the first pass"):
        reid_metrics_streamed(q["emb"], q["ids"], shrinking)


# --------------------------------------------------------------------------------------------
# Streamed index
# --------------------------------------------------------------------------------------------

from conftest import require

faiss = require("faiss", "gallery search needs faiss (pip install 'attreid[search]')")
from attreid.search import build as build_module
from attreid.search import index as index_module
from attreid.search import sources as sources_module
from attreid.search import write_index, write_index_from_store


def _index_args(metric: str = "euclidean") -> dict:
    return {"checkpoint": Path("model.pt"), "checkpoint_sha256": "0" * 64, "metric": metric}


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_streamed_flat_index_equals_the_in_memory_one(tmp_path, monkeypatch, metric):
    monkeypatch.setattr(sources_module, "WRITE_CHUNK", 6)  # many FAISS / SQLite chunks
    g = _gallery(3, n=45, dim=8)
    store = _write(tmp_path / "s", g, shard_size=7)
    streamed = write_index_from_store(tmp_path / "a", store, **_index_args(metric))
    memory = write_index(tmp_path / "b", g["paths"], g["emb"], g["probs"], **_index_args(metric))
    # both paths hand FAISS the same vectors, bit for bit: the same search on any CPU
    assert np.array_equal(streamed.vectors.reconstruct_n(0, 45),
                          memory.vectors.reconstruct_n(0, 45))
    q = _queries(g, 3, q=9)["emb"]
    d1, i1 = streamed.search(q, 10)
    d2, i2 = memory.search(q, 10)
    assert np.array_equal(i1, i2) and np.array_equal(d1, d2)
    assert streamed.entries(range(45)) == memory.entries(range(45))
    assert streamed.entries([44])[0].path == g["paths"][44]


def _clusters(n: int = 600, centres: int = 12, dim: int = 16) -> dict:
    rng = np.random.default_rng(7)
    centre = rng.standard_normal((centres, dim)) * 10
    g = _gallery(7, n=n, dim=dim)
    g["emb"] = (centre[np.arange(n) % centres] + rng.standard_normal((n, dim))).astype(np.float32)
    return g


def test_ivf_trains_on_a_sample_and_still_finds_the_right_hits(tmp_path, monkeypatch):
    monkeypatch.setattr(build_module, "IVF_SAMPLE_MAX", 100)
    monkeypatch.setattr(build_module, "IVF_SAMPLE_MIN_PER_LIST", 10)
    taken: list[int] = []
    take = FeatureStore.take
    monkeypatch.setattr(FeatureStore, "take",
                        lambda self, name, rows: taken.append(len(rows)) or take(self, name, rows))
    g = _clusters()
    store = _write(tmp_path / "s", g, shard_size=64)
    assert build_module.ivf_sample_size(600, 8) == 100  # 10 * 8 < 100 < 256 * 8 < 600
    index = write_index_from_store(tmp_path / "a", store, kind="ivf", nlist=8, nprobe=2,
                                   **_index_args())
    assert taken == [100] and index.vectors.is_trained and len(index) == 600
    rng = np.random.default_rng(1)
    picks = rng.choice(600, 30, replace=False)
    queries = g["emb"][picks] + 0.01 * rng.standard_normal((30, 16)).astype(np.float32)
    _, ids = index.search(queries, 1)
    assert np.array_equal(ids[:, 0], picks)  # each noisy copy finds its source
    memory = write_index(tmp_path / "b", g["paths"], g["emb"], g["probs"], kind="ivf",
                         nlist=8, nprobe=2, **_index_args())
    # the same seeded sample trains both quantizers: the same centroids, the same search
    centroids = [faiss.extract_index_ivf(i.vectors).quantizer.reconstruct_n(0, 8)
                 for i in (index, memory)]
    assert np.array_equal(*centroids)
    assert np.array_equal(memory.search(queries, 5)[1], index.search(queries, 5)[1])


def test_ivf_sample_size_is_bounded():
    assert build_module.ivf_sample_size(1000, 10) == 1000
    assert build_module.ivf_sample_size(10**6, 1000) == 65_536
    assert build_module.ivf_sample_size(10**7, 10_000) == 400_000  # 40 per list at least


class _ColourPredictor:
    """A stand-in for attreid.Predictor: mean colour embeddings, probabilities from them."""

    checkpoint = Path("colour.pt")
    checkpoint_sha256 = "c" * 64
    distance = "euclidean"
    flip = False
    embedding_dim = 3

    def predict(self, images):
        from attreid.inference.predictor import Prediction

        emb = np.stack([np.asarray(im, np.float32).mean((0, 1)) / 255 for im in images])
        probs = {}
        for task in TASKS:
            raw = np.exp(emb[:, :1] * np.arange(1, task.num_classes + 1, dtype=np.float32))
            probs[task.name] = (raw / raw.sum(1, keepdims=True)).astype(np.float32)
        return Prediction(emb.astype(np.float32), probs, np.zeros((len(emb), 12), np.int64))


def test_build_index_streams_through_a_store_and_equals_write_index(tmp_path):
    folder = tmp_path / "crops"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(23):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        name = f"{k % 5:04d}_c{k % 3 + 1}s1_{k:06d}_00.png"
        Image.new("RGB", (8, 16), colour).save(folder / name)
    (folder / "broken.jpg").write_bytes(b"not an image")
    predictor = _ColourPredictor()
    with pytest.warns(UserWarning, match="broken.jpg"):
        built = build_module.build_index(predictor, folder, tmp_path / "idx", batch_size=4,
                                         shard_size=5, features=tmp_path / "features")
    assert not list(tmp_path.glob(".idx*"))  # no scratch left
    store = FeatureStore.open(tmp_path / "features")
    assert len(store) == 23 and store.shard_rows == [5, 5, 5, 5, 3]
    embedded = build_module.embed_files(predictor, build_module.list_gallery(folder))
    # batches of 4 into shards of 5, or all at once: the same embeddings, bit for bit
    assert np.array_equal(store.column(EMBEDDINGS), embedded.embeddings)
    memory = write_index(tmp_path / "mem", embedded.paths, embedded.embeddings,
                         embedded.probabilities, checkpoint=predictor.checkpoint,
                         checkpoint_sha256=predictor.checkpoint_sha256)
    assert built.entries(range(23)) == memory.entries(range(23))
    q = embedded.embeddings[:4] + 0.01
    assert np.array_equal(built.search(q, 5)[1], memory.search(q, 5)[1])
    with pytest.warns(UserWarning):
        build_module.build_index(predictor, folder, tmp_path / "idx2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crops", "features", "idx", "idx2",
                                                           "mem"]


def test_extract_to_store_keeps_batch_fields(tmp_path):
    predictor = _ColourPredictor()
    images = [Image.new("RGB", (4, 4), (i, 2 * i, 3 * i)) for i in range(11)]
    batches = (ImageBatch(images[i:i + 4], fields={"ids": np.arange(i, min(i + 4, 11))})
               for i in range(0, 11, 4))
    seen = []
    store = extract_to_store(predictor, batches, tmp_path / "s", shard_size=3,
                             progress=seen.append)
    assert seen == [4, 8, 11] and store.shard_rows == [3, 3, 3, 2] and not store.has_paths
    assert np.array_equal(store.column("ids"), np.arange(11))
    np.testing.assert_allclose(store.column(EMBEDDINGS)[:, 1], np.arange(11) * 2 / 255,
                               rtol=1e-6)
    assert store.column("probabilities").shape == (11, P)


def test_cli_index_build_keeps_the_feature_store(tiny_checkpoint, synth_market, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from attreid.cli import app

    crops = tmp_path / "crops"
    crops.mkdir()
    for path in sorted((synth_market / "bounding_box_test").glob("*.jpg"))[:12]:
        shutil.copy(path, crops / path.name)
    args = ["index", "build", str(tiny_checkpoint), "--images", str(crops), "--device", "cpu",
            "--batch-size", "4", "--shard-size", "5"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "idx"), "--features",
                                      str(tmp_path / "features")])
    assert result.exit_code == 0 and "indexed 12 crops" in result.output, result.output
    store = FeatureStore.open(tmp_path / "features")
    assert store.shard_rows == [5, 5, 2] and store.info["metric"] == "euclidean"
    index = index_module.GalleryIndex.open(tmp_path / "idx")
    np.testing.assert_allclose(index.vectors.reconstruct_n(0, 12), store.column(EMBEDDINGS),
                               atol=1e-6)
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "idx2"), "--features",
                                      str(tmp_path / "features")])
    assert result.exit_code == 1 and "not an empty folder" in result.output
    assert not (tmp_path / "idx2").exists()
