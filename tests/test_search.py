"""Gallery index (FAISS + SQLite) and its queries, checked against brute force."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require
from helpers import assert_nearest_within

require("faiss", "gallery search needs faiss (pip install 'attreid[search]')")

from attreid.inference.predictor import Predictor
from attreid.metrics import pairwise_distance  # noqa: E402
from attreid.metrics.reranking import rerank_dense
from attreid.schema import TASKS  # noqa: E402
from attreid.search import (  # noqa: E402
    GalleryIndex,
    GalleryIndexError,
    GallerySearch,
    QueryError,
    add_images,
    build_index,
    parse_attributes,
)
from attreid.search import index as index_module  # noqa: E402
from attreid.search.metadata import parse_name  # noqa: E402
from attreid.search.query import RERANK_DEPTH  # noqa: E402
from attreid.search.vectors import prepare_vectors  # noqa: E402
from attreid.utils.files import file_sha256


@pytest.fixture(scope="module")
def api(search_index) -> GallerySearch:
    return GallerySearch.open(search_index)


@pytest.fixture(scope="module")
def gallery(api) -> dict:
    """Every indexed crop's embedding (recomputed) and entry, for brute-force answers."""
    entries = api.index.entries(range(len(api.index)))
    emb = api.predictor.predict([Path(e.path) for e in entries]).embeddings
    return {"entries": entries, "embeddings": emb}


def test_build_records_every_crop_with_metadata(api, synth_market, tiny_checkpoint):
    files = sorted((synth_market / "bounding_box_test").glob("*.jpg"))
    assert len(api.index) == len(files)
    assert api.index.info["checkpoint_sha256"] == file_sha256(tiny_checkpoint)
    entries = api.index.entries([0, len(files) - 1])
    for entry in entries:
        identity, camera, frame = parse_name(Path(entry.path).name)
        assert (entry.identity, entry.camera, entry.frame) == (identity, camera, frame)
        assert entry.camera is not None
        for task in TASKS:
            probs = entry.probabilities[task.name]
            assert len(probs) == task.num_classes and abs(sum(probs) - 1) < 1e-4
    assert sorted(Path(e.path).name for e in api.index.entries(range(len(files)))) == \
        [f.name for f in files]


def test_every_held_out_crop_ranks_the_gallery_as_brute_force(api, gallery, synth_market):
    """Each query's top 10 (ids, order, distances) and rank-1 identity are those of the
    brute-force distances to every gallery embedding, whatever the (tiny) model's accuracy.
    Mutations caught: faiss_to_distance without its sqrt (distances); by_vector reversing the
    top k only for queries whose nearest id is odd (order; the single-query test below misses
    it)."""
    queries = sorted((synth_market / "query").glob("*.jpg"))
    identities = np.array([e.identity for e in gallery["entries"]])
    for query in queries:
        q = api.predictor.predict([query]).embeddings
        dist = pairwise_distance(torch.from_numpy(q), torch.from_numpy(gallery["embeddings"]))
        dist = dist[0].numpy()
        hits = api.by_image(query, k=10)
        ids = [h.entry.id for h in hits]
        # FAISS and torch compute float32 distances differently (and per CPU): entries closer
        # than 1e-4 may swap; anything else must match (as in the test below)
        assert_nearest_within(ids, dist, tol=1e-4)
        assert np.allclose([h.distance for h in hits], dist[ids], atol=1e-4), query.name
        nearest = np.argsort(dist, kind="stable")
        tied = dist[nearest[1]] - dist[nearest[0]] <= 1e-4
        if not tied:  # the rank-1 identity the old accuracy gate counted, from brute force
            assert hits[0].entry.identity == identities[nearest[0]], query.name


def test_image_search_equals_brute_force(api, gallery, synth_market):
    query = sorted((synth_market / "query").glob("*.jpg"))[3]
    q = api.predictor.predict([query]).embeddings
    dist = pairwise_distance(torch.from_numpy(q), torch.from_numpy(gallery["embeddings"]))[0]
    hits = api.by_image(query, k=10)
    # FAISS and torch compute float32 distances differently (and per CPU): entries closer
    # than 1e-4 may swap; anything else must match
    assert_nearest_within([h.entry.id for h in hits], dist.numpy(), tol=1e-4)
    ids = [h.entry.id for h in hits]
    assert np.allclose([h.distance for h in hits], dist[ids].numpy(), atol=1e-4)


def test_a_gallery_crop_finds_itself_at_distance_zero(api):
    entry = api.index.entries([7])[0]
    top = api.by_image(entry.path, k=1)[0]
    assert top.entry.id == 7 and top.distance == pytest.approx(0.0, abs=1e-3)


def test_search_by_indexed_crop_leaves_it_out(api, gallery):
    hits = api.by_id(7, k=5)
    assert 7 not in [h.entry.id for h in hits] and len(hits) == 5
    emb = gallery["embeddings"]
    dist = pairwise_distance(torch.from_numpy(emb[7:8]), torch.from_numpy(emb))[0]
    dist[7] = float("inf")
    assert_nearest_within([h.entry.id for h in hits], dist.numpy(), tol=1e-4)


def _satisfies(entry, constraints, min_prob) -> bool:
    return all(entry.probabilities[c.task][_class(c)] >= min_prob for c in constraints)


def _class(c) -> int:
    return next(t for t in TASKS if t.name == c.task).classes.index(c.value)


def test_attribute_query_ranks_matching_crops_by_joint_probability(api, gallery):
    spec = "gender=female,up=short"
    constraints = parse_attributes(spec)
    hits = api.by_attributes(spec, k=1000, min_prob=0.3)
    expected = [e for e in gallery["entries"] if _satisfies(e, constraints, 0.3)]
    assert hits and len(hits) == len(expected)
    for hit in hits:
        assert hit.entry.attributes()["gender"]["probability"] >= 0.3
        assert hit.entry.probabilities["gender"][1] >= 0.3  # female
        assert hit.entry.probabilities["up"][1] >= 0.3  # short sleeves
    matches = [h.match for h in hits]
    assert matches == sorted(matches, reverse=True)
    best = max(expected, key=lambda e: e.probabilities["gender"][1] * e.probabilities["up"][1])
    assert hits[0].entry.id == best.id


def test_image_and_attributes_filter_then_rank(api, gallery, synth_market):
    query = sorted((synth_market / "query").glob("*.jpg"))[0]
    hits = api.by_image(query, k=1000, attributes={"gender": "male"}, cameras=[1, 2],
                        min_prob=0.5, hard=True)
    allowed = [e.id for e in gallery["entries"]
               if e.camera in (1, 2) and e.probabilities["gender"][0] >= 0.5]
    assert sorted(h.entry.id for h in hits) == sorted(allowed)
    q = api.predictor.predict([query]).embeddings
    dist = pairwise_distance(torch.from_numpy(q), torch.from_numpy(gallery["embeddings"]))[0]
    assert [h.entry.id for h in hits] == sorted(allowed, key=lambda i: (float(dist[i]), i))
    assert all(h.match is not None and h.match >= 0.5 for h in hits)


def test_rerank_reorders_the_top_candidates(api, synth_market):
    query = sorted((synth_market / "query").glob("*.jpg"))[1]
    plain = api.by_image(query, k=len(api.index))
    reranked = api.by_image(query, k=10, rerank=True)
    assert len(reranked) == 10
    # the values: the dense (textbook) k-reciprocal re-ranking of the first RERANK_DEPTH
    # candidates, computed here; k1 = min(20, n - 1), k2 = min(6, k1), lambda 0.3
    candidates = [h.entry.id for h in plain[:RERANK_DEPTH]]
    gallery = np.stack([api.index.vector(i) for i in candidates])
    vector = prepare_vectors(api.embed(query)[None], api.index.metric)
    k1 = min(20, len(candidates) - 1)
    dense = rerank_dense(vector, gallery, k1=k1, k2=min(6, k1), lambda_value=0.3)[0]
    order = np.argsort(dense, kind="stable")[:10]
    assert [h.entry.id for h in reranked] == [candidates[j] for j in order]
    np.testing.assert_allclose([h.distance for h in reranked], dense[order], atol=1e-6)
    assert [h.entry.id for h in reranked] != [h.entry.id for h in plain[:10]]  # it reorders


@pytest.mark.parametrize("spec, message", [
    ("colour=red", "unknown attribute 'colour'"),
    ("gender=woman", "unknown value 'woman'"),
    ("gender", "task=value"),
    ("gender=male,gender=female", "more than once"),
    ('{"gender": ', "invalid JSON"),
])
def test_bad_attribute_queries_name_the_problem(spec, message):
    with pytest.raises(QueryError, match=message):
        parse_attributes(spec)


def test_bad_query_arguments(api):
    with pytest.raises(QueryError, match="k=0"):
        api.by_attributes("gender=male", k=0)
    with pytest.raises(QueryError, match="min_prob"):
        api.by_attributes("gender=male", min_prob=2)
    with pytest.raises(QueryError, match="at least one"):
        api.by_attributes("")
    with pytest.raises(QueryError, match="not in the index"):
        api.by_id(10**6)


def test_parse_name():
    assert parse_name("0002_c1s1_000451_03.jpg") == (2, 1, 451)
    assert parse_name("-1_c3s2_000100_00.jpg") == (-1, 3, 100)
    assert parse_name("cam2-f42.png") == (None, 2, 42)
    assert parse_name("c3_000120.jpg") == (None, 3, 120)
    assert parse_name("person.jpg") == (None, None, None)


# ---- building, adding, failures ------------------------------------------------------------


@pytest.fixture
def small_gallery(synth_market, tmp_path) -> Path:
    folder = tmp_path / "crops"
    folder.mkdir()
    for f in sorted((synth_market / "bounding_box_test").glob("*.jpg"))[:20]:
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint, device="cpu")


def test_add_appends_new_crops_only(predictor, small_gallery, synth_market, tmp_path):
    index = build_index(predictor, small_gallery, tmp_path / "idx")
    first = index.entries([0])[0]
    (small_gallery / "broken.jpg").write_bytes(b"not a jpeg")
    for f in sorted((synth_market / "query").glob("*.jpg"))[:5]:
        shutil.copy(f, small_gallery / f.name)
    with pytest.warns(UserWarning, match="broken.jpg"):
        added, known, skipped = add_images(index, predictor, small_gallery)
    assert (added, known, len(skipped)) == (5, 20, 1)
    reopened = GalleryIndex.open(tmp_path / "idx")
    assert len(reopened) == 25 and reopened.entries([0])[0] == first
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        ".writer.lock", "meta.sqlite", "vectors-1.faiss"]
    assert not list(tmp_path.glob(".idx.add.*"))  # the scratch feature store is gone
    new = reopened.entries([24])[0]
    search = GallerySearch(reopened, predictor)
    assert search.by_image(new.path, k=1)[0].entry.id == 24
    with pytest.warns(UserWarning, match="broken.jpg"):  # tried again, never indexed
        assert add_images(reopened, predictor, small_gallery)[:2] == (0, 25)


def test_a_failed_add_leaves_the_index_unchanged(predictor, small_gallery, synth_market,
                                                tmp_path, monkeypatch):
    index = build_index(predictor, small_gallery, tmp_path / "idx")
    for f in sorted((synth_market / "query").glob("*.jpg"))[:3]:
        shutil.copy(f, small_gallery / f.name)

    def fail(*_):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(index_module, "_insert", fail)
    with pytest.raises(GalleryIndexError, match="disk is full.*unchanged"):
        add_images(index, predictor, small_gallery)
    reopened = GalleryIndex.open(tmp_path / "idx")
    assert len(reopened) == 20
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == [
        ".writer.lock", "meta.sqlite", "vectors-0.faiss"]
    assert not list(tmp_path.glob(".idx.add.*"))


def test_index_refuses_another_checkpoint(search_index, tiny_checkpoint, tmp_path):
    other = tmp_path / "other.pt"
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    first = next(iter(state["model"]))
    state["model"][first] = state["model"][first] + 1
    torch.save(state, other)
    with pytest.raises(GalleryIndexError, match="did not make the index"):
        GallerySearch.open(search_index, checkpoint=other)
    with pytest.raises(GalleryIndexError, match="did not make the index"):
        add_images(GalleryIndex.open(search_index), Predictor(other, device="cpu"),
                   tmp_path)


def test_build_refuses_to_overwrite_and_empty_folders(predictor, small_gallery, tmp_path):
    build_index(predictor, small_gallery, tmp_path / "idx")
    with pytest.raises(GalleryIndexError, match="already exists"):
        build_index(predictor, small_gallery, tmp_path / "idx")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="no images"):
        build_index(predictor, empty, tmp_path / "idx2")
    assert not (tmp_path / "idx2").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_damaged_indexes_give_clear_errors(predictor, small_gallery, tmp_path):
    with pytest.raises(GalleryIndexError, match="not an attreid index"):
        GalleryIndex.open(tmp_path / "nothing")
    build_index(predictor, small_gallery, tmp_path / "idx")
    with sqlite3.connect(tmp_path / "idx" / "meta.sqlite") as db:  # a key lost from its info
        saved = db.execute("SELECT value FROM info WHERE key = 'vectors'").fetchone()[0]
        db.execute("DELETE FROM info WHERE key = 'vectors'")
    with pytest.raises(GalleryIndexError, match="info table lacks vectors"):
        GalleryIndex.open(tmp_path / "idx")
    with sqlite3.connect(tmp_path / "idx" / "meta.sqlite") as db:
        db.execute("INSERT INTO info (key, value) VALUES ('vectors', ?)", (saved,))
    GalleryIndex.open(tmp_path / "idx").close()
    (tmp_path / "idx" / "vectors-0.faiss").write_bytes(b"garbage")
    with pytest.raises(GalleryIndexError, match="cannot read FAISS vectors"):
        GalleryIndex.open(tmp_path / "idx")
    (tmp_path / "idx" / "vectors-0.faiss").unlink()
    with pytest.raises(GalleryIndexError, match="not found"):
        GalleryIndex.open(tmp_path / "idx")
    (tmp_path / "idx" / "meta.sqlite").write_bytes(b"garbage" * 100)
    with pytest.raises(GalleryIndexError, match="corrupt index database"):
        GalleryIndex.open(tmp_path / "idx")


def test_ivf_index_with_every_list_probed_equals_exact(predictor, synth_market, tmp_path,
                                                      api):
    ivf = build_index(predictor, synth_market / "bounding_box_test", tmp_path / "ivf",
                      kind="ivf", nlist=4, nprobe=4)
    assert ivf.info["kind"] == "ivf"
    search = GallerySearch(ivf, predictor)
    query = sorted((synth_market / "query").glob("*.jpg"))[2]
    assert [h.entry.id for h in search.by_image(query, k=10)] == \
        [h.entry.id for h in api.by_image(query, k=10)]
    assert search.by_id(3, k=3)[0].entry.id != 3
    with pytest.raises(GalleryIndexError, match="at least 1000 images"):
        build_index(predictor, synth_market / "bounding_box_test", tmp_path / "ivf2",
                    kind="ivf", nlist=1000)


def test_cli_build_add_search(tiny_checkpoint, small_gallery, synth_market, tmp_path):
    import json

    from typer.testing import CliRunner

    from attreid.cli import app

    runner = CliRunner()
    out = tmp_path / "idx"
    result = runner.invoke(app, ["index", "build", str(tiny_checkpoint), "--images",
                                 str(small_gallery), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "indexed 20 crops" in result.output
    query = sorted((synth_market / "query").glob("*.jpg"))[0]
    shutil.copy(query, small_gallery / query.name)
    result = runner.invoke(app, ["index", "add", str(out), "--images", str(small_gallery)])
    assert result.exit_code == 0 and "added 1 crops (20 already indexed" in result.output
    result = runner.invoke(app, ["search", str(out), "--image", str(query), "-k", "3", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)  # stderr: the backend line
    assert hits[0]["name"] == query.name and hits[0]["distance"] < 1e-3
    result = runner.invoke(app, ["search", str(out), "-a", "gender=female", "-k", "2"])
    assert result.exit_code == 0 and "result(s)" in result.output
    from attreid.cli import base

    with pytest.MonkeyPatch.context() as patch:  # one line per header, whatever width was left
        patch.setattr(base.console, "width", 200)
        result = runner.invoke(app, ["search", str(out), "--image", str(query), "-k", "3"])
        assert "euclidean distance" in result.output  # the table says which distance it shows
        result = runner.invoke(app, ["search", str(out), "--image", str(query), "-k", "3",
                                     "--rerank"])
        assert "re-ranked distance" in result.output
    for args, message in ((["search", str(out), "-a", "hat=perhaps"], "unknown value"),
                          (["search", str(tmp_path / "none"), "-a", "hat=yes"],
                           "not an attreid index"),
                          (["index", "build", str(tiny_checkpoint), "--images", str(small_gallery),
                            "--out", str(out)], "already exists"),
                          (["serve", str(tmp_path / "none")], "not an attreid index")):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and message in result.output, (args, result.output)


def test_nearest_within_allows_near_ties_only():
    dist = np.array([0.30, 0.10, 0.10005, 0.90])
    assert_nearest_within([2, 1, 0], dist, tol=1e-4)  # 1 and 2 are a near-tie: either order
    with pytest.raises(AssertionError):
        assert_nearest_within([0, 1, 2], dist, tol=1e-4)  # 0 is not the nearest
    with pytest.raises(AssertionError):
        assert_nearest_within([1, 2, 3], dist, tol=1e-4)  # 3 is not among the 3 nearest
