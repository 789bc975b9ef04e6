"""Writers of a gallery index: two adds at once, a writer and its readers, scratch folders of
killed writers, folder modes under the umask, and a full disk at each write of build and add.

Concurrency is checked with real processes (``subprocess``), each opening the index itself."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require

require("faiss", "gallery search needs faiss (pip install 'attreid[search]')")

from attreid import cli  # noqa: E402
from attreid.inference import features as features_module  # noqa: E402
from attreid.inference.predictor import Predictor  # noqa: E402
from attreid.schema import TASKS  # noqa: E402
from attreid.search import (  # noqa: E402
    GalleryIndex,
    GalleryIndexError,
    add_images,
    build_index,
    write_index,
)
from attreid.search import build as build_module  # noqa: E402
from attreid.search import index as index_module  # noqa: E402
from attreid.search import index_state as index_state_module  # noqa: E402
from attreid.search import storage as storage_module  # noqa: E402
from attreid.search.storage import WRITER_LOCK, IndexDiskFullError  # noqa: E402

ADDER = """
import json, os, sys, time
from pathlib import Path
from attreid.inference.predictor import Predictor
from attreid.search import GalleryIndex, add_images
index_dir, checkpoint, images, go = sys.argv[1:]
predictor = Predictor(checkpoint, device="cpu")
index = GalleryIndex.open(index_dir)  # opened before the other writer adds: stale by then
Path(f"{go}.ready.{os.getpid()}").touch()
while not Path(go).exists():
    time.sleep(0.005)
waited = []
added, known, skipped = add_images(index, predictor, images, on_wait=waited.append)
print(json.dumps({"added": added, "known": known, "waited": len(waited)}))
"""

HOLDER = """
import os, sys, time
from pathlib import Path
from attreid.utils.files import lock_file
lock, ready, release = sys.argv[1:]
fd = lock_file(lock)
Path(ready).touch()
while not Path(release).exists():
    time.sleep(0.01)
"""

SQLITE_WRITER = """
import sqlite3, sys, time
from pathlib import Path
db_path, ready, release = sys.argv[1:]
db = sqlite3.connect(db_path, isolation_level=None)
db.execute("BEGIN EXCLUSIVE")  # a writer committing: readers must wait
Path(ready).touch()
while not Path(release).exists():
    time.sleep(0.01)
db.execute("ROLLBACK")
"""

KILLED_ADD = """
import os, signal, sys
from pathlib import Path
from attreid.utils.files import locked_temp_folder
with locked_temp_folder(sys.argv[1], sys.argv[2]) as scratch:
    (scratch / "store").mkdir()
    (scratch / "store" / "embeddings-00000.npy").write_bytes(b"x" * 1000)
    os.kill(os.getpid(), signal.SIGKILL)  # killed mid-add: the folder stays, its lock is free
"""


# ---- helpers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint) -> Predictor:
    return Predictor(tiny_checkpoint, device="cpu")


def _copy(files: list[Path], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy(f, folder / f.name)
    return folder


@pytest.fixture
def base(predictor, synth_market, tmp_path) -> Path:
    """An index of 10 crops at ``tmp_path / "idx"``."""
    crops = _copy(sorted((synth_market / "bounding_box_test").glob("*.jpg"))[:10],
                  tmp_path / "base")
    build_index(predictor, crops, tmp_path / "idx")
    return tmp_path / "idx"


def _train_crops(synth_market: Path) -> list[Path]:
    return sorted((synth_market / "bounding_box_train").glob("*.jpg"))


def _rows(root: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(root / "meta.sqlite") as db:
        rows = db.execute("SELECT id, path FROM images ORDER BY id").fetchall()
    db.close()
    return rows


def _assert_whole(root: Path, predictor: Predictor, paths: set[str]) -> None:
    """The index holds exactly ``paths``, ids 0..N-1, as many vectors as rows, only its
    current files, and every crop's own embedding finds the crop itself first."""
    index = GalleryIndex.open(root)
    rows = _rows(root)
    assert [i for i, _ in rows] == list(range(len(rows)))
    assert {p for _, p in rows} == paths and len(rows) == len(paths)
    assert len(index) == len(rows) == index.vectors.ntotal
    assert sorted(p.name for p in root.iterdir()) == sorted(
        [WRITER_LOCK, "meta.sqlite", index.info["vectors"]])
    ordered = [p for _, p in rows]
    emb = predictor.predict([Path(p) for p in ordered]).embeddings
    dist, ids = index.search(emb, 1)
    assert [index.entries([int(i)])[0].path for i in ids[:, 0]] == ordered
    np.testing.assert_allclose(dist[:, 0], 0.0, atol=1e-3)
    assert not [p.name for p in root.parent.iterdir() if p.name.startswith(f".{root.name}.")]
    index.close()


def _wait_for(path: Path, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"{what} ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not start")
        time.sleep(0.01)


def _hold(script: str, *args: str, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """Start a process running ``script`` with ``args``, ready file, release file; wait until
    it is ready; return it and the release file."""
    ready, release = tmp_path / "held.ready", tmp_path / "held.release"
    ready.unlink(missing_ok=True)
    release.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", script, *args, str(ready), str(release)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(ready, proc, "the holder")
    return proc, release


# ---- item 1: writers are serialised ----------------------------------------------------------


def test_two_processes_adding_at_once_keep_every_crop(base, predictor, synth_market,
                                                     tiny_checkpoint, tmp_path):
    """Three rounds of two `add`s started together, each through an index it opened before
    the other wrote (the issue lost every crop this way): one adds a/, the other all of the
    round (a/ and b/). Both report success, the crops of a/ are added once, and the index
    holds the old crops plus every added one."""
    expected = {p for _, p in _rows(base)}
    crops = _train_crops(synth_market)
    for round_ in range(3):
        folder = tmp_path / f"round{round_}"
        _copy(crops[8 * round_:8 * round_ + 4], folder / "a")
        _copy(crops[8 * round_ + 4:8 * round_ + 8], folder / "b")
        go = tmp_path / f"go{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", ADDER, str(base), str(tiny_checkpoint),
                                   str(images), str(go)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for images in (folder / "a", folder)]
        deadline = time.monotonic() + 180
        while len(list(tmp_path.glob(f"go{round_}.ready.*"))) < 2:
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline, "the adders did not start"
            time.sleep(0.01)
        go.touch()
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))
        assert sum(r["added"] for r in results) == 8, results  # a/ once, b/ once
        assert results[1]["added"] + results[1]["known"] == 8, results
        expected |= {str(p.resolve()) for p in folder.rglob("*.jpg")}
        assert {p for _, p in _rows(base)} == expected
    _assert_whole(base, predictor, expected)


def test_an_add_through_a_stale_index_appends_after_the_other(base, predictor, synth_market,
                                                             tmp_path):
    first, second = GalleryIndex.open(base), GalleryIndex.open(base)  # both at generation 0
    crops = _train_crops(synth_market)
    a = _copy(crops[:3], tmp_path / "new" / "a")
    _copy(crops[3:5], tmp_path / "new" / "b")
    assert add_images(first, predictor, a)[:2] == (3, 0)
    # `second` still holds generation 0 in memory: it must append after `first`'s crops,
    # add only b/ (a/ is in the index now) and leave a/'s rows and vectors alone
    assert add_images(second, predictor, tmp_path / "new")[:2] == (2, 3)
    assert second.info["generation"] == 2 and len(second) == 15
    expected = {p for _, p in _rows(base)}
    assert len(expected) == 15
    _assert_whole(base, predictor, expected)


def test_a_second_writer_waits_for_the_lock_and_says_so(base, predictor, synth_market,
                                                       tmp_path):
    index = GalleryIndex.open(base)
    new = _copy(_train_crops(synth_market)[:2], tmp_path / "new")
    holder, release = _hold(HOLDER, str(base / WRITER_LOCK), tmp_path=tmp_path)
    told = []

    def waiting(message: str) -> None:  # called once, before the wait: let the holder go
        told.append(message)
        release.touch()

    try:
        assert add_images(index, predictor, new, on_wait=waiting)[:2] == (2, 0)
    finally:
        release.touch()
        holder.wait(timeout=60)
    assert len(told) == 1 and "another process is writing this index" in told[0]
    assert str(base) in told[0]
    assert len(GalleryIndex.open(base)) == 12


def test_open_removes_strays_only_when_no_writer_is_at_work(base, tmp_path):
    stray = base / "vectors-1.faiss"  # what a writer at work has written, not yet committed
    stray.write_bytes(b"a new generation being written")
    holder, release = _hold(HOLDER, str(base / WRITER_LOCK), tmp_path=tmp_path)
    try:
        assert len(GalleryIndex.open(base)) == 10
        assert stray.exists()  # the writer's file is left alone
    finally:
        release.touch()
        holder.wait(timeout=60)
    GalleryIndex.open(base).close()
    assert not stray.exists()  # a killed writer's stray: removed


def test_a_reader_meeting_a_writer_is_told_to_try_again_not_corrupt(base, tmp_path,
                                                                   monkeypatch):
    monkeypatch.setattr(index_state_module, "READ_TIMEOUT_S", 0.2)
    monkeypatch.setattr(storage_module, "READ_TIMEOUT_S", 0.2)
    opened = GalleryIndex.open(base)
    holder, release = _hold(SQLITE_WRITER, str(base / "meta.sqlite"), tmp_path=tmp_path)
    try:
        with pytest.raises(GalleryIndexError) as error:
            GalleryIndex.open(base)
        with pytest.raises(GalleryIndexError) as query_error:
            opened.entries([0])
    finally:
        release.touch()
        holder.wait(timeout=60)
    for message in (str(error.value), str(query_error.value)):
        assert "another process is writing this index" in message
        assert "corrupt" not in message and "not damaged" in message
    assert len(GalleryIndex.open(base)) == 10  # and it reads once the writer is done
    assert opened.entries([0])[0].id == 0


def test_build_overwrite_waits_for_an_add_and_an_add_then_finds_the_new_index(
        base, predictor, synth_market, tmp_path):
    crops = _copy(_train_crops(synth_market)[:6], tmp_path / "other")
    holder, release = _hold(HOLDER, str(base / WRITER_LOCK), tmp_path=tmp_path)
    told = []

    def waiting(message: str) -> None:
        told.append(message)
        release.touch()

    try:
        rebuilt = build_index(predictor, crops, base, overwrite=True, on_wait=waiting)
    finally:
        release.touch()
        holder.wait(timeout=60)
    assert len(told) == 1 and len(rebuilt) == 6
    _assert_whole(base, predictor, {str(p.resolve()) for p in crops.glob("*.jpg")})


# ---- item 11: scratch folders of killed writers ----------------------------------------------


def test_scratch_folders_of_killed_writers_are_removed_live_ones_kept(base, tmp_path):
    parent = base.parent
    killed = []
    for prefix in (".idx.add.", ".idx.features.", ".idx."):
        proc = subprocess.run([sys.executable, "-c", KILLED_ADD, str(parent), prefix],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == -9, proc.stderr
    killed = sorted(p.name for p in parent.iterdir() if p.name.startswith(".idx."))
    assert len(killed) == 3
    legacy = parent / ".idx.add.abcd1234.tmp"  # an older attreid's: no lock file at all
    (legacy / "store").mkdir(parents=True)
    live = parent / ".idx.add.live5678.tmp"
    (live / "store").mkdir(parents=True)
    unrelated = [parent / ".idx.json.abcd1234.tmp", parent / ".idx2.add.abcd1234.tmp"]
    unrelated[0].write_text("an atomic write of another file")
    unrelated[1].mkdir()
    holder, release = _hold(HOLDER, str(live / WRITER_LOCK), tmp_path=tmp_path)
    try:
        GalleryIndex.open(base).close()
        left = sorted(p.name for p in parent.iterdir() if p.name.startswith(".idx"))
    finally:
        release.touch()
        holder.wait(timeout=60)
    assert left == sorted([live.name, *(p.name for p in unrelated)])  # 4 leftovers removed
    assert (live / "store").is_dir()


# ---- item 7: folder modes follow the umask ---------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_index_folder_and_files_follow_the_umask(predictor, synth_market, tmp_path, umask):
    crops = _copy(sorted((synth_market / "bounding_box_test").glob("*.jpg"))[:4],
                  tmp_path / "crops")
    before = os.umask(umask)
    try:
        index = build_index(predictor, crops, tmp_path / "idx")
        _copy(_train_crops(synth_market)[:2], crops)
        add_images(index, predictor, crops)
    finally:
        os.umask(before)
    root = tmp_path / "idx"
    assert (root.stat().st_mode & 0o777) == 0o777 & ~umask
    for name in ("meta.sqlite", "vectors-1.faiss", WRITER_LOCK):
        assert ((root / name).stat().st_mode & 0o777) == 0o666 & ~umask, name


# ---- item 10: a full disk --------------------------------------------------------------------


def _no_space(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _database_full(*_args, **_kwargs):
    raise sqlite3.OperationalError("database or disk is full")


def _fill_disk(point: str, writing: str, monkeypatch) -> None:
    """Make the disk full at one write: the scratch feature store, the SQLite rows, the FAISS
    vectors file (its data or its fsync)."""
    if point == "store":
        monkeypatch.setattr(features_module, "_atomic_save", _no_space)
    elif point == "store, short write":  # numpy says so, without errno (seen on a tmpfs)
        def short(*_args, **_kwargs):
            raise OSError("206080 requested and 153568 written")

        monkeypatch.setattr(features_module.np, "save", short)
    elif point == "rows":
        monkeypatch.setattr(build_module if writing == "build" else index_module, "_insert",
                            _database_full)
    elif point == "vectors data":
        faiss = index_module._faiss()
        real = faiss.PyCallbackIOWriter

        def writer(write):  # the Python file under FAISS fails at its first bytes
            def fail(data):
                _no_space()
            return real(fail)

        monkeypatch.setattr(faiss, "PyCallbackIOWriter", writer)
    else:
        real_fsync = os.fsync

        def fsync(fd: int) -> None:
            if ".faiss" in os.readlink(f"/proc/self/fd/{fd}"):
                _no_space()
            real_fsync(fd)

        monkeypatch.setattr(storage_module.os, "fsync", fsync)


POINTS = ["store", "store, short write", "rows", "vectors data", "vectors fsync"]


@pytest.mark.parametrize("point", POINTS)
def test_a_full_disk_during_add_is_one_named_error_and_the_index_is_intact(
        base, predictor, synth_market, tmp_path, monkeypatch, point):
    if point == "vectors fsync" and not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd")
    paths = {p for _, p in _rows(base)}
    index = GalleryIndex.open(base)
    new = _copy(_train_crops(synth_market)[:3], tmp_path / "new")
    _fill_disk(point, "add", monkeypatch)
    with pytest.raises(IndexDiskFullError) as error:
        add_images(index, predictor, new)
    message = str(error.value)
    assert message.startswith(f"{base}: the disk is full")
    assert "needs about" in message and "free now" in message and "unchanged" in message
    monkeypatch.undo()
    _assert_whole(base, predictor, paths)
    assert add_images(index, predictor, new)[:2] == (3, 0)  # space again: the add works


@pytest.mark.parametrize("point", POINTS)
def test_a_full_disk_during_build_is_one_named_error_and_nothing_is_lost(
        base, predictor, synth_market, tmp_path, monkeypatch, point):
    if point == "vectors fsync" and not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd")
    paths = {p for _, p in _rows(base)}
    crops = _copy(_train_crops(synth_market)[:4], tmp_path / "other")
    _fill_disk(point, "build", monkeypatch)
    for out, overwrite in ((base, True), (tmp_path / "fresh", False)):
        with pytest.raises(IndexDiskFullError,
                           match=f"^{re.escape(str(out))}: the disk is full.*needs about"):
            build_index(predictor, crops, out, overwrite=overwrite)
    monkeypatch.undo()
    assert not (tmp_path / "fresh").exists()
    _assert_whole(base, predictor, paths)  # the old index: as it was, nothing left beside


def test_the_cli_prints_a_full_disk_as_one_error(base, synth_market, tmp_path, monkeypatch,
                                                 capsys):
    monkeypatch.delenv("ATTREID_DEBUG", raising=False)
    monkeypatch.setenv("COLUMNS", "400")
    new = _copy(_train_crops(synth_market)[:2], tmp_path / "new")
    monkeypatch.setattr(index_module, "_insert", _database_full)
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["index", "add", str(base), "--images", str(new), "--backend", "torch-fp32"])
    out = capsys.readouterr()
    text = out.out + out.err
    assert exit_info.value.code == 1, text
    assert "Traceback" not in text and text.count("error:") == 1, text
    assert f"{base}: the disk is full" in text and "needs about" in text, text
    assert len(GalleryIndex.open(base)) == 10


# ---- the IVF message names the real option ---------------------------------------------------


def _arrays(n: int, dim: int = 8) -> dict:
    rng = np.random.default_rng(0)
    return {"paths": [Path(f"/g/{i:04d}_c1s1_000{i:03d}_00.jpg") for i in range(n)],
            "embeddings": rng.standard_normal((n, dim)).astype(np.float32),
            "probabilities": {t.name: np.full((n, len(t.classes)), 1 / len(t.classes))
                              for t in TASKS},
            "checkpoint": Path("model.pt"), "checkpoint_sha256": "0" * 64}


def test_ivf_errors_name_the_ivf_option_and_auto_lists_fit_a_small_gallery(tmp_path):
    with pytest.raises(GalleryIndexError, match=r"needs at least 50.*has 12.*--ivf N") as error:
        write_index(tmp_path / "a", kind="ivf", nlist=50, **_arrays(12))
    assert "--nlist" not in str(error.value)
    index = write_index(tmp_path / "b", kind="ivf", nlist=0, **_arrays(12))  # 4 sqrt(12) = 13
    assert index.info["nlist"] == 12 and len(index) == 12
