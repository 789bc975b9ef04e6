"""File names that are not UTF-8 (a byte such as 0xE9, which Python holds as a lone surrogate,
see ``os.fsdecode``) and other odd names: stored exactly by the feature store, the search index,
``attreid predict`` and evaluate's store, shown escaped where people read them, never fatal."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sqlite3
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from helpers import make_course

from attreid.inference.features import EMBEDDINGS, FeatureStore, FeatureWriter
from attreid.utils.files import printable_name

ODD = os.fsdecode(b"caf\xe9_c2_000120.jpg")  # camera 2, frame 120; the 0xE9 byte is not UTF-8
SHOWN = "caf\\xe9_c2_000120.jpg"


def test_printable_name_escapes_only_what_utf8_text_cannot_hold():
    assert ODD == "caf\udce9_c2_000120.jpg"
    assert printable_name(ODD) == SHOWN
    assert printable_name("plain_c1_000001.jpg") == "plain_c1_000001.jpg"
    assert printable_name("café ü 人.jpg") == "café ü 人.jpg"  # valid UTF-8 is kept
    assert printable_name("a\nb\tc\x7f.jpg") == "a\\nb\\tc\\x7f.jpg"
    assert printable_name("\ud800x\u2028.jpg") == "\\ud800x\\u2028.jpg"
    for name in (ODD, "a\nb", "\ud800", "x\u2028y"):
        shown = printable_name(name)
        shown.encode("utf-8")  # strict: valid UTF-8
        assert len(shown.splitlines()) == 1


# ---- the feature store -----------------------------------------------------------------------


def test_feature_store_round_trips_every_path_exactly(tmp_path):
    paths = [f"/g/{ODD}", "/g/plain.jpg", "/g/line\nbreak.jpg", "/g/café.jpg",
             "/g/\ud800lone.jpg", os.fsdecode(b"/g/\xff\xfe.jpg"), "/g/tab\t.jpg"]
    emb = np.arange(len(paths) * 3, dtype=np.float32).reshape(len(paths), 3)
    with FeatureWriter(tmp_path / "s", shard_size=3) as writer:  # three shards
        writer.add(emb[:4], paths[:4], ids=np.arange(4))
        writer.add(emb[4:], paths[4:], ids=np.arange(4, len(paths)))
    store = FeatureStore.open(tmp_path / "s")
    assert store.shard_rows == [3, 3, 1]
    chunks = list(store.chunks([EMBEDDINGS], paths=True))
    assert [p for c in chunks for p in c.paths] == paths  # the identical str, every one
    assert np.array_equal(np.concatenate([c.arrays[EMBEDDINGS] for c in chunks]), emb)
    for shard in range(3):  # the path lists are valid UTF-8, one line per row
        text = (tmp_path / "s" / f"paths-{shard:05d}.txt").read_bytes().decode("utf-8")
        assert len(text.splitlines()) == store.shard_rows[shard]
    assert "/g/café.jpg" in (tmp_path / "s" / "paths-00001.txt").read_text()  # readable


def test_feature_store_of_format_1_still_reads(tmp_path):
    with FeatureWriter(tmp_path / "s", shard_size=8) as writer:
        writer.add(np.zeros((2, 3), np.float32), ["/g/a.jpg", "/g/é.jpg"])
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    manifest["format"] = 1  # format 1: plain lines
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "s" / "paths-00000.txt").write_text("/g/a.jpg\n/g/é.jpg\n")
    chunk = next(FeatureStore.open(tmp_path / "s").chunks(paths=True))
    assert chunk.paths == ["/g/a.jpg", "/g/é.jpg"]


# ---- the search index ------------------------------------------------------------------------


@pytest.fixture
def odd_gallery(synth_market, tmp_path) -> Path:
    """Six crops, one named with the byte 0xE9."""
    folder = tmp_path / "crops"
    folder.mkdir()
    files = sorted((synth_market / "bounding_box_test").glob("*.jpg"))[:6]
    for f in files[:5]:
        shutil.copy(f, folder / f.name)
    shutil.copy(files[5], folder / ODD)
    return folder


def _cli():
    from typer.testing import CliRunner

    from attreid.cli import app

    return CliRunner(), app


def test_cli_index_build_stores_the_odd_name_and_finds_it(tiny_checkpoint, odd_gallery,
                                                         tmp_path):
    require("faiss", "gallery search needs faiss (pip install 'attreid[search]')")
    from attreid.inference.predictor import Predictor
    from attreid.search import GalleryIndex, GallerySearch

    runner, app = _cli()
    out = tmp_path / "idx"
    result = runner.invoke(app, ["index", "build", str(tiny_checkpoint), "--images",
                                 str(odd_gallery), "--out", str(out), "--device", "cpu",
                                 "--features", str(tmp_path / "store"), "--shard-size", "4"])
    assert result.exit_code == 0, result.output
    assert "indexed 6 crops" in result.output
    odd = str((odd_gallery / ODD).resolve())
    store = FeatureStore.open(tmp_path / "store")  # the kept store holds the exact path
    assert odd in [p for c in store.chunks(paths=True) for p in c.paths]

    index = GalleryIndex.open(out)
    assert odd in index.indexed_paths()
    entries = index.entries(range(len(index)))
    (entry,) = [e for e in entries if e.path == odd]
    assert Path(entry.path).is_file()  # the same file opens
    assert (entry.camera, entry.frame, entry.identity) == (2, 120, None)
    assert entry.display_name == SHOWN
    with sqlite3.connect(out / "meta.sqlite") as db:  # a BLOB that reads back exactly
        stored = db.execute("SELECT path, name FROM images WHERE id = ?",
                            (entry.id,)).fetchone()
    assert stored == (odd.encode("utf-8", "surrogatepass"),
                      ODD.encode("utf-8", "surrogatepass"))
    assert sum(isinstance(e.path, str) and "\udce9" in e.path for e in entries) == 1

    search = GallerySearch(index, Predictor(tiny_checkpoint, device="cpu"))
    top = search.by_image(odd, k=1)[0]
    assert top.entry.id == entry.id and top.distance == pytest.approx(0.0, abs=1e-3)
    assert top.as_dict()["name"] == SHOWN
    json.dumps(top.as_dict(), ensure_ascii=False).encode("utf-8")  # as the service writes it

    result = runner.invoke(app, ["search", str(out), "--image", odd, "-k", "2", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)  # stderr: the backend line
    assert hits[0]["id"] == entry.id and hits[0]["name"] == SHOWN
    assert hits[0]["distance"] < 1e-3


def test_cli_index_add_of_odd_names_adds_each_once(tiny_checkpoint, odd_gallery, synth_market,
                                                   tmp_path):
    require("faiss", "gallery search needs faiss (pip install 'attreid[search]')")
    from attreid.search import GalleryIndex

    runner, app = _cli()
    out = tmp_path / "idx"
    moved = tmp_path / "later"
    moved.mkdir()
    shutil.move(odd_gallery / ODD, moved / ODD)
    result = runner.invoke(app, ["index", "build", str(tiny_checkpoint), "--images",
                                 str(odd_gallery), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0 and "indexed 5 crops" in result.output, result.output
    shutil.move(moved / ODD, odd_gallery / ODD)
    broken = os.fsdecode(b"broken\xe8.jpg")  # undecodable, with an odd name: skipped, named
    (odd_gallery / broken).write_bytes(b"not a jpeg")
    result = runner.invoke(app, ["index", "add", str(out), "--images", str(odd_gallery),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "added 1 crops (5 already indexed, 1 undecodable)" in result.output
    assert "broken\\xe8.jpg" in result.output  # the warning names the skipped file
    index = GalleryIndex.open(out)
    odd = str((odd_gallery / ODD).resolve())
    assert len(index) == 6 and index.entries([5])[0].path == odd
    index.close()
    result = runner.invoke(app, ["index", "add", str(out), "--images", str(odd_gallery),
                                 "--device", "cpu"])  # known by its exact path: not again
    assert result.exit_code == 0, result.output
    assert "added 0 crops (6 already indexed" in result.output
    assert len(GalleryIndex.open(out)) == 6


def test_service_answers_and_serves_odd_names(tiny_checkpoint, odd_gallery, tmp_path):
    require("faiss", "the service needs faiss (pip install 'attreid[serve]')")
    require("fastapi", "the service needs fastapi (pip install 'attreid[serve]')")
    from fastapi.testclient import TestClient

    from attreid.inference.predictor import Predictor
    from attreid.search import GallerySearch, build_index
    from attreid.search.service import create_app

    predictor = Predictor(tiny_checkpoint, device="cpu")
    index = build_index(predictor, odd_gallery, tmp_path / "idx")
    odd = str((odd_gallery / ODD).resolve())
    (entry,) = [e for e in index.entries(range(len(index))) if e.path == odd]
    client = TestClient(create_app(GallerySearch(index, predictor)))
    with open(odd, "rb") as f:
        response = client.post("/search", files={"image": ("crop.jpg", f, "image/jpeg")},
                               data={"k": "3"})
    assert response.status_code == 200, response.text
    top = response.json()["results"][0]
    assert (top["id"], top["name"], top["url"]) == (entry.id, SHOWN, f"/images/{entry.id}")
    assert top["distance"] < 1e-3
    response = client.get("/search/attributes", params={"k": 50, "min_prob": 0.0,
                                                        "gender": "male"})
    assert response.status_code == 200, response.text
    assert SHOWN in [r["name"] for r in response.json()["results"]]
    response = client.get(f"/images/{entry.id}")
    assert response.status_code == 200 and response.content == Path(odd).read_bytes()


# ---- attreid predict and evaluate's store ----------------------------------------------------


def test_predict_keeps_the_odd_name_exactly_and_shows_it_escaped(tiny_checkpoint, tmp_path):
    from attreid.inference.predict import predict_dataset

    root = make_course(tmp_path / "course")
    (root / "test" / "000002.jpg").rename(root / "test" / ODD)
    query_odd = os.fsdecode(b"q\xe9.jpg")
    (root / "queries" / "000002.jpg").rename(root / "queries" / query_odd)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        files = predict_dataset(tiny_checkpoint, root, tmp_path / "out", top_k=3,
                                device="cpu")
    messages = [str(w.message) for w in caught]
    assert any("2 file name(s)" in m and SHOWN in m and "q\\xe9.jpg" in m for m in messages), \
        messages

    features = np.load(files.features)
    paths = [str(p) for p in features["paths"]]
    assert str(root / "test" / ODD) in paths and str(root / "queries" / query_odd) in paths

    text = files.classification.read_bytes().decode("utf-8")  # strict: valid UTF-8
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["id"] for r in rows] == sorted(["000000.jpg", "000001.jpg", "000001(1).jpg",
                                              SHOWN])
    lines = files.ranking.read_bytes().decode("utf-8").splitlines()
    assert [ln.split(": ")[0] for ln in lines] == ["000000.jpg", "000001.jpg", "q\\xe9.jpg"]
    for line in lines:
        assert sorted(line.split(": ")[1].split(", ")) == ["000000.jpg", "000001.jpg", SHOWN]


def test_predict_cli_writes_its_files(tiny_checkpoint, tmp_path):
    root = make_course(tmp_path / "course")
    (root / "test" / "000002.jpg").rename(root / "test" / ODD)
    runner, app = _cli()
    result = runner.invoke(app, ["predict", str(tiny_checkpoint), "--data", str(root),
                                 "--out", str(tmp_path / "out"), "--top-k", "2",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((tmp_path / "out" / "classification_test.csv").open()))
    assert SHOWN in [r["id"] for r in rows] and len(rows) == 4


def test_evaluate_store_keeps_odd_paths(synth_market, tiny_checkpoint, tmp_path):
    from attreid.evaluation.evaluate import evaluate_checkpoint

    root = tmp_path / os.fsdecode(b"market\xe9")  # every path holds the byte
    shutil.copytree(synth_market, root)
    result = evaluate_checkpoint(tiny_checkpoint, root, device="cpu", batch_size=64,
                                 store=tmp_path / "gallery", out=tmp_path / "eval")
    store = FeatureStore.open(tmp_path / "gallery")
    paths = [p for c in store.chunks(paths=True) for p in c.paths]
    assert len(paths) == result.metrics["setup"]["num_gallery"] > 0
    assert all(p.startswith(str(root / "bounding_box_test")) and Path(p).is_file()
               for p in paths)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["setup"]["data"] == str(root)
