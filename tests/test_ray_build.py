"""`attreid index build --ray` (issue 32): the crops embedded by Ray workers (a local Ray
started by the command) give the gallery a run in one process gives: the same crops in the same
order, the same vectors to float32 rounding, the same search results; on an index folder and on
Milvus Lite, through the same code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from attreid import cli
from conftest import require

from attreid.cluster.ray_embed import parts  # noqa: E402

VECTOR_TOLERANCE = 1e-5
"""Largest difference allowed between a vector embedded in one process and by a Ray worker
(unit-length 512-d vectors, float32). Both see the same batches on the same backend, but a
worker runs torch on one thread (Ray sets OMP_NUM_THREADS=1 for a one-CPU actor) where the
process runs on every core, and the order of a convolution's sums may differ with the thread
count: measured 0 on AMD EPYC Zen 5 (the largest seen so far: see the assertion message)."""


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run([str(a) for a in args])
    out = capsys.readouterr()
    return (exit_.value.code or 0), out.out + out.err


def test_parts_are_whole_batches_in_order():
    assert parts(0, 64) == []
    assert parts(100, 8, batches=4) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert parts(64, 64, batches=1) == [(0, 64)]
    covered = [i for a, b in parts(1000, 7, batches=3) for i in range(a, b)]
    assert covered == list(range(1000))
    assert all((b - a) % 7 == 0 for a, b in parts(1000, 7, batches=3)[:-1])


def _vectors(index):
    from attreid.search.engines import open_location

    gallery = open_location(index)
    try:
        entries = gallery.entries(range(len(gallery)))
        return [e.path for e in entries], gallery.vectors_of(range(len(gallery)))
    finally:
        gallery.close()


def _build_twice(checkpoint, synth_market, tmp_path, ray_out: str, options, capsys) -> None:
    """The gallery built in this process into ``tmp_path/one`` and on a local Ray into
    ``ray_out`` (batches of 4: the 128 crops make two parts of 16 batches)."""
    common = ["index", "build", checkpoint, "--images", synth_market / "bounding_box_test",
              "--backend", "torch-fp32", "--batch-size", "4"]
    code, text = _run([*common, "--out", tmp_path / "one"], capsys)
    assert code == 0, text
    code, text = _run([*common, "--out", ray_out, "--ray", "local", *options], capsys)
    assert code == 0, text


def test_a_ray_build_equals_the_single_process_build(tiny_checkpoint, synth_market, tmp_path,
                                                     capsys):
    require("ray", "index build --ray needs Ray (the ray extra)")
    _build_twice(tiny_checkpoint, synth_market, tmp_path, str(tmp_path / "ray"),
                 ["--ray-workers", "2"], capsys)
    paths, single = _vectors(str(tmp_path / "one"))
    ray_paths, spread = _vectors(str(tmp_path / "ray"))
    assert len(paths) > 4 * 16  # more than one part of 16 batches: both workers had parts
    assert ray_paths == paths
    gap = float(np.abs(single - spread).max())
    assert gap <= VECTOR_TOLERANCE, f"largest vector difference {gap:.2e}"
    for query in (["--id", "3", "-k", "8"], ["-a", "gender=female", "-k", "8"]):
        hits = []
        for index in (tmp_path / "one", tmp_path / "ray"):
            with pytest.raises(SystemExit) as exit_:
                cli.run([str(a) for a in ["search", index, *query, "--json"]])
            out = capsys.readouterr()
            assert not exit_.value.code, out.err
            hits.append([h["id"] for h in json.loads(out.out)])
        assert hits[0] == hits[1], query


def test_a_ray_build_into_milvus_lite(tiny_checkpoint, synth_market, tmp_path, capsys):
    require("ray", "index build --ray needs Ray (the ray extra)")
    require("pymilvus", "the Milvus backend needs pymilvus (the milvus extra)")
    require("milvus_lite", "Milvus Lite needs milvus-lite (the milvus extra)")
    _build_twice(tiny_checkpoint, synth_market, tmp_path, f"{tmp_path / 'site.db'}#site", [],
                 capsys)
    paths, single = _vectors(str(tmp_path / "one"))
    milvus_paths, spread = _vectors(f"{tmp_path / 'site.db'}#site")
    assert milvus_paths == paths
    assert float(np.abs(single - spread).max()) <= VECTOR_TOLERANCE


def test_an_unreachable_cluster_is_one_line(tiny_checkpoint, synth_market, tmp_path, capsys):
    require("ray", "index build --ray needs Ray (the ray extra)")
    code, text = _run(["index", "build", tiny_checkpoint, "--images",
                       synth_market / "bounding_box_test", "--out", tmp_path / "x",
                       "--ray", "127.0.0.1:1"], capsys)
    assert code == 1 and "--ray 127.0.0.1:1: cannot connect to a Ray cluster" in text, text
    assert "Traceback" not in text and not (tmp_path / "x").exists()
    code, text = _run(["index", "build", tiny_checkpoint, "--images",
                       synth_market / "bounding_box_test", "--out", tmp_path / "x",
                       "--ray", "no-port"], capsys)
    assert code == 1 and "expected auto, local, HOST:PORT" in text, text


def test_a_ray_ingest_equals_the_single_process_ingest(calibrated_index, tmp_path, capsys):
    """`attreid ingest --ray local`: the sources tracked by Ray tasks, the index written here in
    source order, equal to the one-process ingest: the same crops (names under the index), the
    same sightings (camera, time, track, box) and vectors to :data:`VECTOR_TOLERANCE`."""
    require("ray", "ingest --ray needs Ray (the ray extra)")
    require("cv2", "footage ingest (the footage extra)")
    from attreid.data.footage_synth import make_footage
    from attreid.search.index import GalleryIndex

    _, checkpoint = calibrated_index
    info = make_footage(tmp_path / "scene", cameras=2, people=3, seconds=6.0, fps=10.0, seed=4)
    common = ["ingest", checkpoint, "--manifest", info.manifest, "--detector", "motion",
              "--backend", "torch-fp32", "--device", "cpu", "--json"]
    code, text = _run([*common, "--out", tmp_path / "one"], capsys)
    assert code == 0, text
    code, text = _run([*common, "--out", tmp_path / "ray", "--ray", "local"], capsys)
    assert code == 0, text
    assert text.count("on Ray") == 2, text  # both sources tracked by Ray tasks
    one, spread = GalleryIndex.open(tmp_path / "one"), GalleryIndex.open(tmp_path / "ray")
    n = len(one)
    assert n > 0 and len(spread) == n
    ids = list(range(n))
    rel = [[str(Path(e.path).relative_to(g.root)) for e in g.entries(ids)] for g in (one, spread)]
    assert rel[0] == rel[1]
    a, b = one.sightings(ids), spread.sightings(ids)
    assert [(s.camera_name, s.time, s.track) for s in a.values()] == \
        [(s.camera_name, s.time, s.track) for s in b.values()]
    np.testing.assert_allclose([s.box for s in a.values()], [s.box for s in b.values()])
    gap = float(np.abs(one.vectors_of(ids) - spread.vectors_of(ids)).max())
    assert gap <= VECTOR_TOLERANCE, f"largest vector difference {gap:.2e}"
