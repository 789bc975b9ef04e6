"""`attreid index build` and `attreid search` on a Milvus gallery (issue 32): the index argument
names the engine (``FILE.db#NAME``: Milvus Lite; ``http://HOST:19530#NAME``: a server), and the
same query layer answers as on the index folder of the same crops and checkpoint."""

from __future__ import annotations

import json

import pytest

from attreid import cli
from conftest import require

from attreid.search.filters import RowFilter  # noqa: E402
from attreid.search.index import GalleryIndex  # noqa: E402


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run([str(a) for a in args])
    out = capsys.readouterr()
    return (exit_.value.code or 0), out.out, out.err


@pytest.fixture(scope="module")
def lite_gallery(tiny_checkpoint, synth_market, tmp_path_factory):
    require("pymilvus", "the Milvus backend needs pymilvus (the milvus extra)")
    require("milvus_lite", "Milvus Lite needs milvus-lite (the milvus extra)")
    location = f"{tmp_path_factory.mktemp('milvus') / 'site.db'}#site"
    with pytest.raises(SystemExit) as exit_:
        cli.run(["index", "build", str(tiny_checkpoint), "--images",
                 str(synth_market / "bounding_box_test"), "--out", location,
                 "--backend", "torch-fp32"])
    assert (exit_.value.code or 0) == 0
    return location


def _hits(args, capsys):
    code, out, err = _run(["search", *args, "--json"], capsys)
    assert code == 0, out + err
    return json.loads(out)


def test_milvus_gallery_answers_as_the_index_folder(lite_gallery, search_index, capsys):
    for query in (["-a", "gender=female,backpack=yes", "-k", "8"],
                  ["--id", "3", "-k", "6"],
                  ["--id", "5", "-k", "5", "--camera", "2"],
                  ["--id", "1", "-k", "5", "-a", "upcolor=red", "--hard", "--min-prob", "0.2"]):
        milvus = _hits([lite_gallery, *query], capsys)
        folder = _hits([search_index, *query], capsys)
        same = [(h["id"], h["name"]) for h in milvus] == [(h["id"], h["name"]) for h in folder]
        assert same, query
        for a, b in zip(milvus, folder):
            if b.get("distance") is not None:  # float32 vectors on both sides
                assert a["distance"] == pytest.approx(b["distance"], rel=1e-4, abs=1e-4)
    # a filtered image query says how many crops the filter let in, the same on both engines
    allowed = GalleryIndex.open(search_index).count(RowFilter(cameras=(2,)))
    for gallery in (lite_gallery, search_index):
        code, out, err = _run(["search", gallery, "--id", "5", "-k", "5", "--camera", "2"],
                              capsys)
        assert code == 0 and f"the filters allow {allowed:,} crop(s)" in out, out + err


def test_milvus_gallery_errors_are_one_line(lite_gallery, tmp_path, capsys):
    code, out, err = _run(["search", lite_gallery, "-a", "gender=female", "--camera", "9"],
                          capsys)
    assert code == 1 and "camera 9: this index has no crop from it" in out + err
    code, out, err = _run(["search", f"{tmp_path / 'none.db'}#nothing", "-a", "gender=female"],
                          capsys)
    assert code == 1 and "no Milvus Lite gallery here" in out + err
    assert "Traceback" not in out + err and not (tmp_path / "none.db").exists()
    code, out, err = _run(["search", f"{tmp_path / 'no' / 'dir.db'}#x", "-a", "gender=female"],
                          capsys)
    assert code == 1 and f"the folder {tmp_path / 'no'} does not exist" in out + err
    code, out, err = _run(["search", f"{tmp_path / 'x.db'}#bad-name", "-a", "gender=female"],
                          capsys)
    assert code == 1 and "letters, digits and _" in out + err
    wrong = lite_gallery.replace("#site", "#sitee")
    code, out, err = _run(["search", wrong, "-a", "gender=female"], capsys)
    assert code == 1 and "no such gallery (galleries here: site)" in out + err


def test_build_refuses_an_existing_milvus_gallery(lite_gallery, tiny_checkpoint, synth_market,
                                                  capsys):
    code, out, err = _run(["index", "build", tiny_checkpoint, "--images",
                           synth_market / "bounding_box_test", "--out", lite_gallery], capsys)
    assert code == 1 and "the gallery exists" in out + err and "--overwrite" in out + err


def test_a_hash_without_an_engine_is_refused(tiny_checkpoint, synth_market, tmp_path, capsys):
    """`--out site.bd#site` (a typo of .db) must not make a folder named 'site.bd#site'."""
    code, out, err = _run(["index", "build", tiny_checkpoint, "--images",
                           synth_market / "bounding_box_test", "--out",
                           tmp_path / "site.bd#site"], capsys)
    assert code == 1 and "'#' names a Milvus gallery" in out + err, out + err
    assert not list(tmp_path.iterdir())


def test_a_failed_build_leaves_no_lite_gallery(tiny_checkpoint, tmp_path, capsys):
    require("pymilvus", "the Milvus backend needs pymilvus (the milvus extra)")
    require("milvus_lite", "Milvus Lite needs milvus-lite (the milvus extra)")
    crops = tmp_path / "crops"
    crops.mkdir()
    for name in ("0001_c1s1_000001_00.jpg", "0002_c2s1_000002_00.jpg"):
        (crops / name).write_bytes(b"\xff\xd8 not a jpeg")
    out_db = tmp_path / "site.db"
    code, out, err = _run(["index", "build", tiny_checkpoint, "--images", crops, "--out",
                           f"{out_db}#site"], capsys)
    assert code == 1 and "none of the 2 images decoded" in out + err, out + err
    assert not out_db.exists()  # the command made it, and took it away again
    code, out, err = _run(["index", "build", tiny_checkpoint, "--images", tmp_path / "nothing",
                           "--out", f"{out_db}#site"], capsys)
    assert code == 1 and "nothing" in out + err and not out_db.exists()


def test_index_add_extends_a_milvus_gallery_once(lite_gallery, tiny_checkpoint, synth_market,
                                                 tmp_path, capsys):
    import shutil

    new = tmp_path / "new"
    new.mkdir()
    for crop in sorted((synth_market / "query").glob("*.jpg"))[:5]:
        shutil.copy(crop, new / crop.name)
    code, out, err = _run(["index", "add", lite_gallery, "--images", new], capsys)
    assert code == 0 and "added 5 crops (0 already indexed" in out, out + err
    code, out, err = _run(["index", "add", lite_gallery, "--images", new], capsys)
    assert code == 0 and "added 0 crops (5 already indexed" in out, out + err
    hits = _hits([lite_gallery, "--image", new / sorted(p.name for p in new.iterdir())[0],
                  "-k", "1"], capsys)
    assert hits[0]["distance"] == pytest.approx(0.0, abs=1e-3)  # the crop itself, now indexed


def test_the_service_serves_a_milvus_gallery_and_sees_an_add(lite_gallery, capsys):
    require("fastapi", "the service needs FastAPI (pip install 'attreid[serve]')")
    import numpy as np
    from fastapi.testclient import TestClient

    from attreid.search.engines import open_location
    from attreid.search.service import create_app, open_search

    search = open_search(lite_gallery, model=False)
    client = TestClient(create_app(search, watch_s=0))
    first = client.post("/search", data={"attributes": "gender=female", "k": "3"}).json()
    before = client.get("/healthz").json()
    gallery = open_location(lite_gallery)
    rows = gallery.entries([0])
    probs = {t: np.asarray([p], np.float32) for t, p in rows[0].probabilities.items()}
    gallery.add(["/elsewhere/0001_c6s1_000001_00.jpg"], gallery.vectors_of([0]), probs)
    after = client.get("/healthz").json()
    assert first["count"] == 3 and first["total"] == before["images"]
    assert after["images"] == before["images"] + 1  # the service reopened the new generation


def test_a_calibrated_search_reads_vectors_in_batches(calibrated_index, monkeypatch):
    """The drift check, the hits' P(person) and re-ranking read their vectors in a few batched
    reads, never one per crop (on a Milvus server each read is a round trip: one per crop made
    a calibrated search take minutes)."""
    from attreid.search.index import GalleryIndex
    from attreid.search.query import GallerySearch

    reads = []
    batched = GalleryIndex.vectors_of

    def counted(self, ids):
        ids = list(ids)
        reads.append(len(ids))
        return batched(self, ids)

    def one_by_one(self, image_id):
        raise AssertionError(f"a vector read one at a time (id {image_id})")

    monkeypatch.setattr(GalleryIndex, "vectors_of", counted)
    monkeypatch.setattr(GalleryIndex, "vector", one_by_one)
    search = GallerySearch.open(calibrated_index[0])
    assert search.calibration is not None
    assert search.drift() is not None and reads[0] > 1000  # 2,000 random pairs, one read
    reads.clear()
    hits = search.by_id(3, k=10)
    assert len(hits) == 10 and all(h.probability is not None for h in hits)
    assert len(reads) <= 2, reads  # the query, then the hits' vectors for P(person)
    reads.clear()
    assert len(search.by_id(3, k=10, rerank=True)) == 10 and len(reads) <= 3, reads


def test_a_calibrated_milvus_gallery_gives_the_folder_verdicts(calibrated_index, synth_market,
                                                              tmp_path, capsys):
    require("pymilvus", "the Milvus backend needs pymilvus (the milvus extra)")
    require("milvus_lite", "Milvus Lite needs milvus-lite (the milvus extra)")
    folder, checkpoint = calibrated_index
    location = f"{tmp_path / 'cal.db'}#cal"
    code, out, err = _run(["index", "build", checkpoint, "--images",
                           synth_market / "bounding_box_test", "--out", location,
                           "--backend", "torch-fp32"], capsys)
    assert code == 0, out + err
    for query in (["--id", "3", "-k", "8"], ["--id", "40", "-k", "5", "--camera", "1"]):
        milvus, mine = _hits([location, *query], capsys), _hits([folder, *query], capsys)
        assert [h["id"] for h in milvus] == [h["id"] for h in mine], query
        for a, b in zip(milvus, mine):
            assert b["probability"] is not None
            # float32 distances through a Platt fit: equal to 1e-4 as the distances are
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)
            assert a["same"] == b["same"]
