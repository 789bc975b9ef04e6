"""The workspace routes of the service (issue 31) on an index of ingested footage: a case made,
marked and exported; the timeline of a person; a hit's frame and track; two result cards
compared as /verify compares uploads."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from conftest import require

require("fastapi", "the service needs FastAPI (pip install 'attreid[serve]')")
require("faiss", "the gallery index (the search extra)")

from fastapi.testclient import TestClient  # noqa: E402

from attreid.inference.verdicts import compare_embeddings  # noqa: E402
from attreid.search.query import GallerySearch  # noqa: E402
from attreid.search.service import create_app  # noqa: E402
from attreid.search.timeline import where_else  # noqa: E402


@pytest.fixture(scope="module")
def search(footage_index) -> GallerySearch:
    index, checkpoint, _ = footage_index
    return GallerySearch.open(index, checkpoint, backend="torch-fp32")


@pytest.fixture(scope="module")
def client(search) -> TestClient:
    return TestClient(create_app(search))


def test_a_case_is_made_marked_noted_and_exported(client, search):
    made = client.post("/cases", data={"name": "api case"})
    assert made.status_code == 201 and made.json()["context"]["calibrated"] is True
    assert client.post("/cases", data={"name": "api case"}).status_code == 422
    hits = client.post("/search", data={"query_id": "2", "k": "5"}).json()["results"]
    for hit, mark in zip(hits, ["right", "right", "wrong"]):
        r = client.post("/cases/api case/marks", data={
            "image_id": hit["id"], "mark": mark, "distance": hit["distance"],
            "probability": hit["probability"], "query": "indexed image 2"})
        assert r.status_code == 200 and r.json()["mark"] == mark
    assert client.post("/cases/api case/marks", data={"image_id": hits[3]["id"],
                                                      "mark": "right"}).status_code == 200
    assert client.post("/cases/api case/marks", data={"image_id": hits[3]["id"],
                                                      "mark": "clear"}).json()["cleared"]
    assert client.post("/cases/api case/notes", data={"text": "left by bus"}).json() == \
        {"notes": 1}
    assert client.post("/cases/api case/queries", data={
        "kind": "indexed image", "detail": json.dumps({"id": 2})}).json() == {"queries": 1}
    case = client.get("/cases/api case").json()
    assert [s["id"] for s in case["timeline"]] == sorted(
        [hits[0]["id"], hits[1]["id"]], key=lambda i: search.index.sightings([i])[i].time)
    assert case["rejected"][0]["id"] == hits[2]["id"]
    assert case["timeline"][0]["query"] == "indexed image 2"
    assert {c["name"]: c["confirmed"] for c in client.get("/cases").json()["cases"]}[
        "api case"] == 2
    page = client.get("/cases/api case/export", params={"format": "html"})
    assert page.status_code == 200 and "attachment" in page.headers["content-disposition"]
    assert page.text.count("data:image/jpeg;base64,") == 6 and "left by bus" in page.text
    rows = list(csv.DictReader(io.StringIO(client.get(
        "/cases/api case/export", params={"format": "csv"}).text)))
    assert [r["mark"] for r in rows] == ["right", "right", "wrong"]
    assert client.get("/cases/api case/export", params={"format": "json"}).json()["case"] == \
        "api case"


@pytest.mark.parametrize("method, url, data, status, text", [
    ("get", "/cases/nope", None, 404, "no case 'nope'"),
    ("post", "/cases/nope/marks", {"image_id": "0", "mark": "right"}, 404, "no case"),
    ("post", "/cases/api case/marks", {"image_id": "0", "mark": "maybe"}, 422, "right, wrong"),
    ("post", "/cases/api case/marks", {"image_id": "99999", "mark": "right"}, 422,
     "no indexed image with id 99999"),
    ("post", "/cases/api case/queries", {"kind": "x", "detail": "[1"}, 422, "invalid JSON"),
    ("post", "/timeline", {}, 422, "give one query"),
    ("post", "/timeline", {"upload": "gone"}, 422, "no longer on the server"),
    ("get", "/context/99999", None, 404, "no indexed image"),
    ("post", "/compare", {"first_id": "0", "second_id": "99999"}, 422, "not in the index"),
])
def test_bad_workspace_requests_are_named(client, method, url, data, status, text):
    client.post("/cases", data={"name": "api case"})
    r = getattr(client, method)(url, **({} if data is None else {"data": data}))
    assert r.status_code == status and text in json.dumps(r.json()), r.text


def test_the_timeline_is_where_else_in_time_order_with_the_query_first(client, search):
    body = client.post("/timeline", data={"query_id": "4"}).json()
    visits, _ = where_else(search, search.index.vector(4), exclude=4)
    assert [v["best"] for v in body["visits"]] == [v.best.entry.id for v in visits]
    assert body["query"]["id"] == 4 and body["rule"]
    starts = [v["start_s"] for v in body["visits"]]
    assert starts == sorted(starts) and body["cameras"] == list(dict.fromkeys(
        v["camera"] for v in body["visits"]))
    wide = client.post("/timeline", data={"query_id": "4", "max_distance": "1e9"}).json()
    assert sum(len(v["crops"]) for v in wide["visits"]) == len(search.index) - 1


def test_a_frame_and_its_track_are_served(client, search):
    from PIL import Image

    r = client.get("/context/7/frame")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    seen = search.index.sightings([7])[7]
    assert Image.open(io.BytesIO(r.content)).size == Image.open(seen.frame_image).size
    ctx = client.get("/context/7").json()
    assert ctx["camera_name"] == seen.camera_name and 7 in [t["id"] for t in ctx["track"]]


def test_two_cards_are_compared_as_verify_compares_uploads(client, search):
    body = client.post("/compare", data={"first_id": "1", "second_id": "6"}).json()
    want = compare_embeddings(search.index.vector(1), search.index.vector(6),
                              search.index.metric, search.calibration, search.far).as_dict()
    assert body["distance"] == pytest.approx(want["distance"], abs=1e-6)
    assert body["same"] == want["same"] and body["probability"] == pytest.approx(
        want["probability"], abs=1e-6)
    assert body["first"]["url"] == "/images/1" and "person" in json.dumps(body)
    # the pair as a search hit: what a result card of a search from #1 says of #6
    card = next(h for h in search.by_id(1, k=len(search.index) - 1) if h.entry.id == 6)
    assert body["as_search_hit"]["probability"] == pytest.approx(card.probability, abs=1e-6)
    assert body["as_search_hit"]["same"] == card.same
    assert np.isfinite(body["distance"])


def test_an_index_of_crop_folders_has_no_frames(search_index):
    plain = TestClient(create_app(GallerySearch.open(search_index)))
    r = plain.get("/context/0/frame")
    assert r.status_code == 404 and "not cut from footage" in r.json()["detail"]
    assert plain.post("/timeline", data={"query_id": "0"}).status_code == 422  # uncalibrated


def test_a_truncated_jpeg_and_a_tiny_crop_are_refused_by_name(client, synth_market):
    """Issue 31: a truncated JPEG is never searched as if whole; a 10x20 crop is "too small",
    not "not a person" (in /search and in /verify alike)."""
    from PIL import Image

    whole = sorted((synth_market / "query").glob("*.jpg"))[0].read_bytes()
    cut = whole[: len(whole) * 2 // 3]
    tiny = io.BytesIO()
    Image.new("RGB", (10, 20), (200, 40, 40)).save(tiny, format="PNG")
    for data, name, said in ((cut, "cut.jpg", "truncated"),
                             (tiny.getvalue(), "tiny.png", "10x20 pixels, too small to "
                                                           "identify a person")):
        searched = client.post("/search", files={"image": (name, data, "image/jpeg")})
        assert searched.status_code == 422 and said in searched.json()["detail"]
        verified = client.post("/verify", files={"first": (name, data, "image/jpeg"),
                                                 "second": ("w.jpg", whole, "image/jpeg")})
        assert verified.status_code == 422 and said in verified.json()["detail"]
        assert "first" in verified.json()["detail"]
