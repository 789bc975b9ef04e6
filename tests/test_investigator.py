"""Search as an investigator lives it (issue 20): re-ranked scores labelled as such, filters on
values the index has never seen refused by name, long commands that report progress into a log,
the CLI table without empty columns, and descriptions searched without the model."""

from __future__ import annotations

import json

import pytest
from conftest import require

from attreid import cli
from attreid.search import GallerySearch, QueryError


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run(list(args))
    out = capsys.readouterr()
    return (exit_.value.code or 0), out.out, out.err


@pytest.fixture(scope="module")
def client(search_index):
    require("fastapi", "the service needs FastAPI (pip install 'attreid[serve]')")
    from fastapi.testclient import TestClient

    from attreid.search.service import create_app

    return TestClient(create_app(GallerySearch.open(search_index, backend="torch-fp32")))


def _query(synth_market):
    return sorted((synth_market / "query").glob("*.jpg"))[0]


def test_reranked_scores_are_labelled_in_the_api(client, synth_market):
    """Fault 4: a re-ranked "distance" is on another scale and says so."""
    crop = _query(synth_market).read_bytes()
    plain = client.post("/search", files={"image": ("q.jpg", crop, "image/jpeg")},
                        data={"k": "5"}).json()
    ranked = client.post("/search", files={"image": ("q.jpg", crop, "image/jpeg")},
                         data={"k": "5", "rerank": "true"}).json()
    assert {r["score"] for r in plain["results"]} == {"distance"}
    assert {r["score"] for r in ranked["results"]} == {"re-ranked distance"}
    attribute = client.get("/search/attributes", params={"gender": "female", "k": 3}).json()
    assert {r["score"] for r in attribute["results"]} == {None}


@pytest.mark.parametrize("cameras, named", [("7", "camera 7"), ("1,9,12", "cameras 9, 12")])
def test_a_camera_the_index_lacks_is_refused_naming_its_cameras(client, search_index, cameras,
                                                                named):
    """Fault 5: API (both routes) and Python alike; CLI below."""
    search = GallerySearch.open(search_index, model=False)
    have = ", ".join(map(str, search.index.cameras()))
    for response in (client.post("/search", data={"attributes": "gender=female",
                                                  "camera": cameras}),
                     client.get("/search/attributes", params={"gender": "female",
                                                              "camera": cameras}),
                     client.post("/search", data={"query_id": "0", "camera": cameras})):
        assert response.status_code == 422
        detail = response.json()["detail"]
        assert named in detail and f"its cameras: {have}" in detail
    with pytest.raises(QueryError, match=f"its cameras: {have}"):
        search.by_id(0, cameras=[int(c) for c in cameras.split(",")])


def test_cli_refuses_an_unknown_camera(search_index, capsys):
    code, out, err = _run(["search", str(search_index), "-a", "gender=female", "--camera", "7"],
                          capsys)
    assert code == 1 and "camera 7: this index has no crop from it" in out + err
    assert "Traceback" not in out + err


def test_long_commands_write_progress_lines_into_a_log(tiny_checkpoint, synth_market, tmp_path,
                                                       capsys, monkeypatch):
    """Fault 3: stdout is not a terminal here (captured): plain lines, the last at 100 %, on
    stderr (issue 31: `> out.txt` keeps the results apart from the progress)."""
    from attreid.cli import base

    monkeypatch.setattr(base, "PROGRESS_EVERY_S", 0.0)
    code, results, out = _run(["index", "build", str(tiny_checkpoint), "--images",
                         str(synth_market / "bounding_box_test"), "--out", str(tmp_path / "i"),
                         "--batch-size", "16", "--backend", "torch-fp32"], capsys)
    assert code == 0
    lines = [ln for ln in out.splitlines() if ln.startswith("embedding crops: ")]
    assert len(lines) >= 3, out
    total = len(list((synth_market / "bounding_box_test").glob("*.jpg")))
    assert lines[-1].startswith(f"embedding crops: {total:,}/{total:,} (100%)")
    assert "embedding crops" not in results
    code, out, _ = _run(["calibrate", str(tiny_checkpoint), "--data", str(synth_market),
                         "--out", str(tmp_path / "c.json"), "--json", "--backend",
                         "torch-fp32"], capsys)
    assert code == 0 and json.loads(out)["calibration"]  # progress kept off stdout's JSON


def test_plain_progress_is_at_most_one_line_per_interval(monkeypatch, capsys):
    from attreid.cli import base

    clock = iter([0.0, 0.0, 1.0, 2.0, 11.0, 12.0, 25.0])
    monkeypatch.setattr(base.time, "monotonic", lambda: next(clock))
    lines = base._ProgressLines("work", __import__("sys").stdout)
    for done in (1, 2, 3, 4, 5, 10):  # at 0, 1, 2, 11, 12 and 25 s; total 10
        lines(done, 10)
    shown = capsys.readouterr().out.splitlines()
    assert [s.split(":")[1].split("(")[0].strip() for s in shown] == ["1/10", "4/10", "10/10"]
    assert "left" in shown[1] and "left" not in shown[2]


def test_cli_table_has_identity_camera_frame_and_no_empty_column(search_index, synth_market,
                                                                 capsys, monkeypatch):
    """Fault 8: image query without constraints: no match column; description: no distance
    column; both show identity, cam and frame; a description never loads the model."""
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = _run(["search", str(search_index), "--image", str(_query(synth_market)),
                         "-k", "3", "--backend", "torch-fp32"], capsys)
    header = next(ln for ln in out.splitlines() if "rank" in ln)
    assert code == 0 and "distance" in header and "match" not in header
    assert all(col in header for col in ("identity", "cam", "frame"))
    from attreid.inference import backends

    def no_model(*args, **kwargs):
        raise AssertionError("a description loaded the model")

    monkeypatch.setattr(backends, "load_predictor", no_model)
    code, out, err = _run(["search", str(search_index), "-a", "gender=female", "-k", "3"],
                          capsys)
    header = next(ln for ln in out.splitlines() if "rank" in ln)
    assert code == 0 and "match" in header and "distance" not in header, out + err
    code, out, err = _run(["search", str(search_index), "--id", "0", "-k", "3", "--json"],
                          capsys)
    assert code == 0 and len(json.loads(out)) == 3  # an indexed crop needs no model either


# ---- what a user needs next --------------------------------------------------------------

import numpy as np  # noqa: E402

from attreid.search.query import SOFT_DEPTH, pool_vectors  # noqa: E402
from attreid.search.results import TRACK_GAP_FRAMES, by_time, group_tracks, hits_csv  # noqa


@pytest.fixture(scope="module")
def api(search_index):
    return GallerySearch.open(search_index, backend="torch-fp32")


@pytest.fixture(scope="module")
def entries(api):
    return api.index.entries(list(range(len(api.index))))


def _distances(api, vector):
    gallery = np.stack([api.index.vector(i) for i in range(len(api.index))])
    return np.linalg.norm(gallery - np.asarray(vector)[None], axis=1)


def test_soft_constraints_reweight_the_nearest_and_hide_nothing(api, entries, synth_market):
    """Uncalibrated: weight exp(-(d - d1) / (median - d1)) over the SOFT_DEPTH nearest, times
    the product of the constraint probabilities; brute force over every crop."""
    vector = api.embed(_query(synth_market))
    d = _distances(api, vector)
    nearest = np.argsort(d, kind="stable")[:SOFT_DEPTH]
    dn = d[nearest]
    weight = np.exp(-(dn - dn.min()) / (np.median(dn) - dn.min()))
    match = np.array([entries[i].probabilities["backpack"][1] for i in nearest])
    expected = [int(nearest[j]) for j in sorted(range(len(nearest)),
                                                key=lambda j: (-weight[j] * match[j], dn[j]))]
    hits = api.by_vector(vector, k=20, attributes="backpack=yes")
    assert [h.entry.id for h in hits] == expected[:20]
    everyone = api.by_vector(vector, k=len(api.index), attributes="backpack=yes")
    assert len(everyone) == min(len(api.index), SOFT_DEPTH)  # nothing hidden
    hard = api.by_vector(vector, k=len(api.index), attributes="backpack=yes", hard=True)
    kept = [i for i in range(len(api.index)) if entries[i].probabilities["backpack"][1] >= 0.5]
    assert sorted(h.entry.id for h in hard) == sorted(kept)
    assert api.count("backpack=yes", min_prob=0.5) == (len(kept), len(api.index) - len(kept))


def test_frames_offset_and_totals_equal_brute_force(api, entries):
    framed = [e for e in entries if e.frame is not None]
    frames = sorted(e.frame for e in framed)
    low, high = frames[len(frames) // 4], frames[3 * len(frames) // 4]
    inside = {e.id for e in framed if low <= e.frame <= high}
    hits = api.by_attributes("gender=female", k=len(api.index), frames=(low, high))
    assert {h.entry.id for h in hits} == inside
    assert api.count("gender=female", frames=(low, high)) == (len(inside), 0)
    ten = api.by_attributes("gender=female", k=10)
    assert [h.entry.id for h in api.by_attributes("gender=female", k=5, offset=5)] == \
        [h.entry.id for h in ten[5:]]
    with pytest.raises(QueryError, match="frames 9-3"):
        api.by_attributes("gender=female", frames=(9, 3))


def test_api_pages_orders_by_time_and_groups_tracks(client, api):
    first = client.post("/search", data={"query_id": "3", "k": "6"}).json()
    second = client.post("/search", data={"query_id": "3", "k": "6", "offset": "6"}).json()
    both = client.post("/search", data={"query_id": "3", "k": "12"}).json()
    assert [r["id"] for r in first["results"] + second["results"]] == \
        [r["id"] for r in both["results"]]
    timeline = client.post("/search", data={"query_id": "3", "k": "12", "order": "time"}).json()
    keys = [(r["camera"], r["frame"]) for r in timeline["results"]]
    assert keys == sorted(keys) and sorted(r["id"] for r in timeline["results"]) == \
        sorted(r["id"] for r in both["results"])
    grouped = client.post("/search", data={"query_id": "3", "k": "40", "group": "true"}).json()
    flat = client.post("/search", data={"query_id": "3", "k": "40"}).json()
    ids = [r["id"] for r in grouped["results"]] + [m["id"] for r in grouped["results"]
                                                   for m in r["group"]["members"]]
    assert sorted(ids) == sorted(r["id"] for r in flat["results"])
    for row in grouped["results"]:
        for member in row["group"]["members"]:
            assert member["camera"] == row["camera"]
    described = client.get("/search/attributes", params={"gender": "female", "k": 5,
                                                         "min_prob": 0.5}).json()
    total, hidden = api.count("gender=female", min_prob=0.5)
    assert described["total"] == total and described["hidden"] == hidden


def test_tracks_chain_near_frames_of_one_camera_with_near_embeddings():
    from attreid.search.metadata import Entry
    from attreid.search.query import Hit

    def hit(i, cam, frame):
        return Hit(Entry(i, f"/x/{i}.jpg", cam, frame, None, {}, ()), float(i), None)

    vectors = {0: np.zeros(2), 1: np.array([0.1, 0]), 2: np.array([0.2, 0]),
               3: np.array([5.0, 0]), 4: np.zeros(2), 5: np.zeros(2)}
    hits = [hit(0, 1, 100), hit(1, 1, 100 + TRACK_GAP_FRAMES), hit(2, 1, 100 + 2 *
                                                                   TRACK_GAP_FRAMES),
            hit(3, 1, 110), hit(4, 2, 100), hit(5, None, None)]
    groups = group_tracks(hits, lambda i: vectors[i], distance=1.0)
    assert [[g.best.entry.id] + [m.entry.id for m in g.members] for g in groups] == \
        [[0, 1, 2], [3], [4], [5]]  # chained by frames; far embedding; other camera; no frame
    assert [h.entry.id for h in by_time(hits)] == [0, 3, 1, 2, 4, 5]
    text = hits_csv(hits[:2], first_rank=7).splitlines()
    assert text[0].startswith("rank,id,path") and text[1].startswith("7,0,/x/0.jpg,,1,100")


def test_several_crops_and_marks_refine_the_query(client, api, synth_market):
    crops = sorted((synth_market / "query").glob("*.jpg"))[:2]
    pooled = pool_vectors(api.embed_many(crops))
    expected = [h.entry.id for h in api.by_vector(pooled, k=5)]
    body = client.post("/search", files=[("image", (c.name, c.read_bytes(), "image/jpeg"))
                                         for c in crops], data={"k": "5"}).json()
    assert [r["id"] for r in body["results"]] == expected
    assert body["upload"].count(",") == 1
    again = client.post("/search", data={"upload": body["upload"], "k": "5"}).json()
    assert [r["id"] for r in again["results"]] == expected
    right, wrong = expected[1], expected[0]
    refined = api.refine(pooled, [right], [wrong])
    by_hand = (pooled + 0.75 * api.index.vector(right) - 0.15 * api.index.vector(wrong)) / 1.6
    assert np.allclose(refined, by_hand, atol=1e-6)
    marked = client.post("/search", data={"upload": body["upload"], "k": "5",
                                          "right": str(right), "wrong": str(wrong)}).json()
    assert wrong not in [r["id"] for r in marked["results"]]
    assert [r["id"] for r in marked["results"]] == \
        [h.entry.id for h in api.by_vector(refined, k=6) if h.entry.id != wrong][:5]


def test_cli_writes_a_csv_of_the_results(search_index, tmp_path, capsys):
    out = tmp_path / "hits.csv"
    code, _, _ = _run(["search", str(search_index), "-a", "gender=female", "-k", "4",
                       "--offset", "2", "--csv", str(out)], capsys)
    assert code == 0
    rows = out.read_text().splitlines()
    assert len(rows) == 5 and rows[1].split(",")[0] == "3"
    search = GallerySearch.open(search_index, model=False)
    assert [int(r.split(",")[1]) for r in rows[1:]] == \
        [h.entry.id for h in search.by_attributes("gender=female", k=4, offset=2)]


def test_training_progress_lines_start_again_each_epoch(monkeypatch, capsys):
    """Plain epoch lines: a new epoch (or a new run's epoch 1, as in the demo) starts a new
    rate, not one measured from the first run's start."""
    from attreid.cli import base

    clock = iter([0.0, 0.0, 1.0, 500.0, 500.0, 501.0])
    monkeypatch.setattr(base.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(base, "PROGRESS_EVERY_S", 0.0)
    on_step = base._plain_epoch_progress(2)
    on_step(0, 0, 2, {"loss": 1.0})
    on_step(0, 1, 2, {"loss": 1.0})
    on_step(0, 0, 2, {"loss": 1.0})  # the next run's first epoch, 500 s later
    on_step(0, 1, 2, {"loss": 1.0})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and "/s" not in lines[2] and lines[3].startswith(
        "epoch 1/2 steps: 2/2 (100%), 2/s")


def test_cli_searches_a_description_in_words(search_index, capsys):
    """Issue 31: people type 'woman without a backpack', not chips; the reading goes to stderr
    (JSON stays JSON), words it cannot map fail with a message naming them."""
    args = ["search", str(search_index), "-k", "30", "--min-prob", "0.5", "--json"]
    code, words, err = _run([*args, "--describe", "woman without a backpack"], capsys)
    assert code == 0 and "read the description as: woman -> gender=female; backpack -> " \
        "backpack=no" in err
    code, chips, _ = _run([*args, "-a", "gender=female,backpack=no"], capsys)
    ids = [r["id"] for r in json.loads(words)]
    assert ids and ids == [r["id"] for r in json.loads(chips)]
    code, out, err = _run([*args, "-d", "tall woman"], capsys)
    assert code == 1 and "'tall' (height is not an attribute)" in out + err
    assert "Traceback" not in out + err


def test_a_frame_range_the_index_lacks_is_refused_naming_its_frames(search_index):
    """Issue 31: the README promises 422 for a frame range the index does not hold."""
    search = GallerySearch.open(search_index, model=False)
    frames = sorted(e.frame for e in search.index.entries(range(len(search.index)))
                    if e.frame is not None)
    with pytest.raises(QueryError, match=f"no crop of this index is in that range; its frames "
                       f"run from {frames[0]} to {frames[-1]}"):
        search.by_attributes("gender=female", frames=(frames[-1] + 1, frames[-1] + 100))
    assert search.by_attributes("gender=female", frames=(frames[0], frames[0]))


def test_a_flip_unlike_the_calibrations_is_warned_before_embedding_and_named_after(
        calibrated_index, synth_market, tmp_path, capsys):
    """Issue 31: the README calibrated with --flip and built the index without: search said
    "uncalibrated" with no fix and index build said nothing (a rebuild lost)."""
    import shutil

    _, checkpoint = calibrated_index  # calibrated without flip
    crops = tmp_path / "crops"
    crops.mkdir()
    for path in sorted((synth_market / "bounding_box_test").glob("*.jpg"))[:12]:
        shutil.copy(path, crops / path.name)
    code, _, err = _run(["index", "build", str(checkpoint), "--images", str(crops), "--out",
                         str(tmp_path / "i"), "--flip", "--backend", "torch-fp32"], capsys)
    assert code == 0 and "warning: the checkpoint's calibration was fitted with flip off and " \
        "this index is built with it on" in err and "Build without --flip" in err
    code, _, err = _run(["search", str(tmp_path / "i"), "--id", "0", "-k", "2"], capsys)
    assert code == 0 and "build the index without --flip, or calibrate again with --flip" in err
