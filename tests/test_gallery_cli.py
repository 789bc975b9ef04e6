"""`attreid index build` and `attreid search` on a Milvus gallery (issue 32): the index argument
names the engine (``FILE.db#NAME``: Milvus Lite; ``http://HOST:19530#NAME``: a server), and the
same query layer answers as on the index folder of the same crops and checkpoint."""

from __future__ import annotations

import json

import pytest

from attreid import cli
from conftest import require


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


def test_milvus_gallery_errors_are_one_line(lite_gallery, tmp_path, capsys):
    code, out, err = _run(["search", lite_gallery, "-a", "gender=female", "--camera", "9"],
                          capsys)
    assert code == 1 and "camera 9: this index has no crop from it" in out + err
    code, out, err = _run(["search", f"{tmp_path / 'none.db'}#nothing", "-a", "gender=female"],
                          capsys)
    assert code == 1 and "no such gallery" in out + err
    assert "Traceback" not in out + err
    code, out, err = _run(["search", f"{tmp_path / 'x.db'}#bad-name", "-a", "gender=female"],
                          capsys)
    assert code == 1 and "letters, digits and _" in out + err


def test_build_refuses_an_existing_milvus_gallery(lite_gallery, tiny_checkpoint, synth_market,
                                                  capsys):
    code, out, err = _run(["index", "build", tiny_checkpoint, "--images",
                           synth_market / "bounding_box_test", "--out", lite_gallery], capsys)
    assert code == 1 and "the gallery exists" in out + err and "--overwrite" in out + err
