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
    """Fault 3: stdout is not a terminal here (captured): plain lines, the last at 100 %."""
    from attreid.cli import base

    monkeypatch.setattr(base, "PROGRESS_EVERY_S", 0.0)
    code, out, _ = _run(["index", "build", str(tiny_checkpoint), "--images",
                         str(synth_market / "bounding_box_test"), "--out", str(tmp_path / "i"),
                         "--batch-size", "16", "--backend", "torch-fp32"], capsys)
    assert code == 0
    lines = [ln for ln in out.splitlines() if ln.startswith("embedding crops: ")]
    assert len(lines) >= 3, out
    total = len(list((synth_market / "bounding_box_test").glob("*.jpg")))
    assert lines[-1].startswith(f"embedding crops: {total:,}/{total:,} (100%)")
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
