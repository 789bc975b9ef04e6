"""A running service and its index folder changing under it (issue 29, item 2): crops added by
another process, the folder rebuilt with --overwrite, and a search with too many query crops.

Each response must come from one generation (its ids, totals, images and tracks all of the
vectors it holds), the new generation must be picked up without a restart, and an image id of a
rebuilt index must never be answered by a thumbnail cached from the old one."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require

require("faiss", "gallery search needs faiss (pip install 'attreid[search]')")
require("fastapi", "the service needs fastapi (pip install 'attreid[serve]')")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from attreid.search import GalleryIndex, GallerySearch  # noqa: E402
from attreid.search.http import MAX_QUERY_CROPS, MIN_HEIGHT, MIN_WIDTH  # noqa: E402
from attreid.search.service import create_app  # noqa: E402

BACKEND = "torch-fp32"  # the service and the writing process embed alike: a crop finds itself


def _cli(*args: str) -> subprocess.Popen:
    """``attreid ARGS`` in a separate process (a real writer beside the service)."""
    return subprocess.Popen([sys.executable, "-m", "attreid.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(process: subprocess.Popen) -> None:
    output, _ = process.communicate(timeout=600)
    assert process.returncode == 0, output


@pytest.fixture
def index_copy(search_index, tmp_path) -> Path:
    """A private copy of the session's index (its rows name the synthetic gallery's files)."""
    return Path(shutil.copytree(search_index, tmp_path / "index"))


@pytest.fixture
def new_crops(synth_market, tmp_path) -> list[Path]:
    """Held-out crops (synth_market's query/) copied to a folder of their own: crops to add."""
    folder = tmp_path / "new"
    folder.mkdir()
    return [Path(shutil.copy(p, folder / p.name))
            for p in sorted((synth_market / "query").glob("*.jpg"))]


def _attributes(client: TestClient, **extra: str) -> dict:
    response = client.get("/search/attributes", params={"gender": "female", "k": 200, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def _consistent(client: TestClient, counts: dict[int, int]) -> int:
    """Ask the service once by description and once for its health; assert each answer is of
    one generation (total = that generation's crops, every id below it) and return it."""
    body = _attributes(client)
    generation, images = body["generation"], counts[body["generation"]]
    assert body["total"] == images, (body["total"], counts)
    assert body["count"] == min(200, images)
    assert max(r["id"] for r in body["results"]) < images
    health = client.get("/healthz").json()
    assert health["images"] == counts[health["generation"]]
    return generation


def _check_generation(client: TestClient, index: Path, images: int) -> None:
    """Everything the service answers agrees with an index of ``images`` crops: health, the
    description total, each result's file, one row per track."""
    truth = GalleryIndex.open(index)
    assert len(truth) == images
    health = client.get("/healthz").json()
    assert (health["images"], health["generation"]) == (images, truth.info["generation"])
    body = _attributes(client)
    assert body["total"] == images and body["generation"] == truth.info["generation"]
    ids = [r["id"] for r in body["results"]]
    assert max(ids) < images
    for image_id, entry in zip(ids, truth.entries(ids)):
        response = client.get(f"/images/{image_id}")
        assert response.status_code == 200, image_id
        assert response.content == Path(entry.path).read_bytes()
    grouped = _attributes(client, group="true")  # tracks: the vectors of every member
    members = [m["id"] for t in grouped["results"] for m in [t, *t["group"]["members"]]]
    assert grouped["count"] == len(grouped["results"]) >= 1
    assert sorted(members) == sorted(ids)
    truth.close()


def test_an_add_by_another_process_is_served_whole_or_not_at_all(index_copy, new_crops,
                                                                  tiny_checkpoint):
    """A service that looks on every request (watch_s=0) and one that never looks by itself
    (until POST /reload) over one index; `attreid index add` in another process appends the
    held-out crops. While it runs every answer is of one generation; after it, the watching
    service serves the new generation at once, the other the old one until asked to reload;
    then both find a new crop at rank 1, distance ~0."""
    search = GallerySearch.open(index_copy, backend=BACKEND)
    before = len(search.index)
    g0 = int(search.index.info["generation"])
    watching = TestClient(create_app(search, watch_s=0))
    asked = TestClient(create_app(search, watch_s=3600))
    counts = {g0: before, g0 + 1: before + len(new_crops)}

    writer = _cli("index", "add", str(index_copy), "--images", str(new_crops[0].parent),
                  "--backend", BACKEND, "--device", "cpu")
    seen = set()
    while writer.poll() is None:  # the service keeps answering while the other process writes
        seen.add(_consistent(watching, counts))
        _consistent(asked, counts)
    _finish(writer)
    seen.add(_consistent(watching, counts))
    assert seen <= {g0, g0 + 1} and g0 + 1 in seen

    # not asked yet: the old generation, whole (nothing of the new rows leaks in)
    assert _consistent(asked, counts) == g0
    old = asked.post("/search", files={"image": (new_crops[0].name, new_crops[0].read_bytes(),
                                                 "image/jpeg")}, data={"k": "5"}).json()
    assert old["generation"] == g0 and max(r["id"] for r in old["results"]) < before
    assert asked.get(f"/images/{before}").status_code == 404
    assert asked.post("/search", data={"query_id": str(before)}).status_code == 422

    reloaded = asked.post("/reload").json()
    assert reloaded["reloaded"] is True and reloaded["generation"] == g0 + 1
    assert reloaded["images"] == before + len(new_crops) and reloaded["reload_error"] is None
    assert asked.post("/reload").json()["reloaded"] is False  # nothing newer

    truth = GalleryIndex.open(index_copy)
    new_ids = {truth.entries([i])[0].path: i for i in range(before, len(truth))}
    for client in (watching, asked):
        _check_generation(client, index_copy, before + len(new_crops))
        crop = new_crops[0]
        body = client.post("/search", files={"image": (crop.name, crop.read_bytes(),
                                                       "image/jpeg")}, data={"k": "5"}).json()
        top = body["results"][0]
        assert body["generation"] == g0 + 1
        assert top["id"] == new_ids[str(crop)] and top["distance"] == pytest.approx(0, abs=1e-3)
        grouped = client.post("/search", data={"query_id": str(top["id"]), "k": "10",
                                               "group": "true"})
        assert grouped.status_code == 200, grouped.text


def test_a_rebuilt_index_serves_its_own_crops_not_cached_ones(index_copy, new_crops,
                                                              tiny_checkpoint):
    """`attreid index build --overwrite` replaces the folder: image 0 becomes another crop. The
    service serves the new file with a new ETag; the old ETag (a browser's cached thumbnail)
    gets the new bytes, not a 304; and no response allows caching without revalidation."""
    search = GallerySearch.open(index_copy, backend=BACKEND)
    client = TestClient(create_app(search, watch_s=0))
    old_path = Path(search.index.entries([0])[0].path)
    first = client.get("/images/0")
    assert first.content == old_path.read_bytes()
    assert first.headers["cache-control"] == "no-cache"
    etag, build = first.headers["etag"], client.get("/healthz").json()["build"]
    again = client.get("/images/0", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag

    _finish(_cli("index", "build", str(tiny_checkpoint), "--images", str(new_crops[0].parent),
                 "--out", str(index_copy), "--overwrite", "--backend", BACKEND,
                 "--device", "cpu"))
    new_path = Path(GalleryIndex.open(index_copy).entries([0])[0].path)
    assert new_path.read_bytes() != old_path.read_bytes()

    health = client.get("/healthz").json()
    assert health["images"] == len(new_crops) and health["build"] != build
    cached = client.get("/images/0", headers={"If-None-Match": etag})
    assert cached.status_code == 200 and cached.content == new_path.read_bytes()
    assert cached.headers["etag"] != etag and cached.headers["cache-control"] == "no-cache"
    assert client.get(f"/images/{len(new_crops)}").status_code == 404
    _check_generation(client, index_copy, len(new_crops))


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (90, 40, 160)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_too_many_query_crops_are_a_422_naming_the_limit_before_any_is_embedded(
        search_index, synth_market):
    """1,000 1x1 PNGs in one 69 kB request (10 s of CPU before), 17 real crops, 17 upload
    tokens: a 422 naming the limit. The service has no model here, so a crop that reached the
    model would answer "needs the index's checkpoint": the limit is checked first. A crop under
    MIN_WIDTH x MIN_HEIGHT pixels is a 422 of its own; MAX_QUERY_CROPS crops are searched."""
    blind = TestClient(create_app(GallerySearch.open(search_index, model=False)))
    tiny, crop = _png(1, 1), sorted((synth_market / "query").glob("*.jpg"))[0].read_bytes()
    for files in ([("image", (f"{i}.png", tiny, "image/png")) for i in range(1000)],
                  [("image", (f"{i}.jpg", crop, "image/jpeg"))
                   for i in range(MAX_QUERY_CROPS + 1)]):
        response = blind.post("/search", files=files)
        assert response.status_code == 422, response.text
        assert f"{len(files)} query crops, at most {MAX_QUERY_CROPS}" in response.json()["detail"]
    tokens = ",".join(f"{i:016x}" for i in range(MAX_QUERY_CROPS + 1))
    response = blind.post("/search", data={"upload": tokens})
    assert response.status_code == 422 and f"at most {MAX_QUERY_CROPS}" in response.text
    assert "checkpoint" in blind.post("/search", files={"image": ("q.jpg", crop,
                                                                  "image/jpeg")}).text

    client = TestClient(create_app(GallerySearch.open(search_index)))
    for width, height in ((MIN_WIDTH - 1, 64), (32, MIN_HEIGHT - 1)):
        small = client.post("/search", files={"image": ("s.png", _png(width, height),
                                                        "image/png")})
        assert small.status_code == 422
        assert f"at least {MIN_WIDTH}x{MIN_HEIGHT}" in small.json()["detail"]
    assert client.post("/search", files={"image": ("s.png", _png(14, 46), "image/png")},
                       data={"k": "2"}).status_code == 200  # as small as ingest keeps
    many = client.post("/search", files=[("image", (f"{i}.jpg", crop, "image/jpeg"))
                                         for i in range(MAX_QUERY_CROPS)], data={"k": "3"})
    assert many.status_code == 200 and many.json()["count"] == 3
