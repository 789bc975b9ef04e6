"""`attreid index export --parquet` (issue 32): every crop of a gallery as Parquet rows that
other engines read; read back with pyarrow, each row equals what the gallery holds (path,
camera, frame, footage time/track/box, 40 probabilities, the vector), on an index folder, on
footage and on Milvus Lite."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from attreid import cli
from conftest import require


def _run(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.run([str(a) for a in args])
    out = capsys.readouterr()
    return (exit_.value.code or 0), out.out + out.err


def _check_rows(location: str, folder) -> int:
    """Every exported row against the gallery; returns the count."""
    import pyarrow.parquet as pq

    from attreid.search.engines import open_location
    from attreid.search.metadata import probability_columns

    gallery = open_location(location)
    table = pq.read_table(folder)  # the folder of parts as one table
    assert table.num_rows == len(gallery)
    rows = table.to_pydict()
    ids = list(range(len(gallery)))
    assert rows["id"] == ids
    entries, sightings = gallery.entries(ids), gallery.sightings(ids)
    assert rows["path"] == [e.path for e in entries]
    assert rows["camera"] == [e.camera for e in entries]
    assert rows["frame"] == [e.frame for e in entries]
    assert rows["identity"] == [e.identity for e in entries]
    for i in ids:
        s = sightings.get(i)
        assert rows["time"][i] == (s.time if s else None)
        assert rows["track"][i] == (s.track if s else None)
        if s:
            np.testing.assert_allclose(rows["box"][i], s.box, rtol=1e-6)  # float32 box
    for task, index, column in probability_columns():
        want = np.array([e.probabilities[task][index] for e in entries], np.float32)
        np.testing.assert_array_equal(np.array(rows[column], np.float32), want)
    vectors = np.array(rows["vec"], np.float32)
    np.testing.assert_array_equal(vectors, gallery.vectors_of(ids))
    info = json.loads((folder / "_gallery.json").read_text())
    assert info["count"] == len(gallery) and info["dim"] == vectors.shape[1]
    gallery.close()
    return len(ids)


def test_export_of_an_index_folder(search_index, tmp_path, capsys):
    require("pyarrow", "Parquet export needs pyarrow (the parquet extra)")
    out = tmp_path / "rows"
    code, text = _run(["index", "export", search_index, "--parquet", out,
                       "--rows-per-file", "50"], capsys)
    assert code == 0, text
    n = _check_rows(str(search_index), out)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # readable as any new folder is
    assert json.loads((out / "_gallery.json").read_text())["location"] == str(search_index)
    assert sorted(p.name for p in out.glob("*.parquet")) == [
        f"part-{i:05d}.parquet" for i in range(-(-n // 50))]
    assert f"wrote {n} crops to {-(-n // 50)} Parquet file(s)" in text
    code, text = _run(["index", "export", search_index, "--parquet", out], capsys)
    assert code == 1 and "exists; choose a new folder" in text
    code, text = _run(["index", "export", tmp_path / "nothing", "--parquet", tmp_path / "o"],
                      capsys)
    assert code == 1 and "Traceback" not in text and not (tmp_path / "o").exists()


def test_export_keeps_footage_times_tracks_and_boxes(footage_index, tmp_path, capsys):
    require("pyarrow", "Parquet export needs pyarrow (the parquet extra)")
    index, _, _ = footage_index
    code, text = _run(["index", "export", index, "--parquet", tmp_path / "rows"], capsys)
    assert code == 0, text
    _check_rows(str(index), tmp_path / "rows")
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "rows", columns=["time", "track", "camera_name"])
    assert table.column("time").null_count == 0 and table.column("track").null_count == 0


def test_export_of_a_milvus_lite_gallery(search_index, tmp_path, capsys):
    require("pyarrow", "Parquet export needs pyarrow (the parquet extra)")
    require("pymilvus", "the Milvus backend needs pymilvus (the milvus extra)")
    require("milvus_lite", "Milvus Lite needs milvus-lite (the milvus extra)")
    from attreid.search.engines import create_gallery, open_location

    folder = open_location(str(search_index))
    ids = list(range(len(folder)))
    entries = folder.entries(ids)
    probabilities = {t: np.stack([e.probabilities[t] for e in entries])
                     for t in entries[0].probabilities}
    location = str(tmp_path / "g.db")
    create_gallery("milvus", location, [e.path for e in entries], folder.vectors_of(ids),
                   probabilities, info={k: folder.info[k] for k in
                                        ("checkpoint", "checkpoint_sha256", "metric")},
                   name="site").close()
    code, text = _run(["index", "export", f"{location}#site", "--parquet", tmp_path / "rows"],
                      capsys)
    assert code == 0, text
    assert _check_rows(f"{location}#site", tmp_path / "rows") == len(folder)
