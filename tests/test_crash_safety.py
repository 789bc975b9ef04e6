"""Crash-safe training: SIGKILL on events (mid-epoch, mid-checkpoint write, after a resume) and a
full disk never leave a corrupt checkpoint, lose at most the current epoch, and resuming gives
exactly the uninterrupted run.

The kills are event-driven, not timed: the test polls the run's folder every millisecond
(last.pt's inode, the ``.last.pt.*.tmp`` temporary of an atomic write) and kills when the
awaited event occurs; afterwards it proves from the files which phase the kill hit
(a temporary left behind: mid-write; a new checkpoint but no new log line: mid-epoch) and asserts
that every phase was hit."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from attreid.config import load_config
from attreid.data.synth import generate
from attreid.training.engine import train
from attreid.utils import files as files_module
from attreid.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

PHASES = ("mid-epoch", "mid-write", "after resume")
KILL_BUDGET = 5  # kills of the training run allowed to hit PHASES (2 suffice when none misses)
WRITE_KILLS = 4  # mid-write SIGKILLs of a process rewriting a checkpoint in a loop
POLL_S = 0.001  # the checkpoint's temporary lives ~0.1 s (138 MB, write + fsync) on this machine
DEADLINE_S = 600

OVERRIDES = ["data.p=4", "data.k=2", "data.batches_per_epoch=4", "data.workers=0",
             "train.amp=none", "train.channels_last=false", "train.eval_every=2",
             "train.tensorboard=false", "optim.epochs=5", "optim.warmup_epochs=1",
             "model.dropout=0.2"]  # dropout draws from torch's global RNG: resume must reseed it
IMAGES_PER_EPOCH = 4 * 2 * 4  # p * k * batches_per_epoch


@pytest.fixture(scope="module")
def crash_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash") / "market"
    generate(root, ids=16, seed=5, layout="market")
    return root


def _records(out: Path) -> list[dict]:
    """metrics.jsonl without the timing."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    for r in records:
        r["train"].pop("images_per_s")
        r["train"].pop("seconds", None)
    return records


def _command(root: Path, out: Path, resume: bool) -> list[str]:
    return [str(Path(sys.executable).parent / "attreid"), "train", "-c", "demo", "--data",
            str(root), "--out", str(out), *(f"--set={o}" for o in OVERRIDES),
            *(["--resume"] if resume else [])]


def _identity(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of ``path``, None when absent: any write to it changes this."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _temporaries(path: Path) -> set[str]:
    """Names of the atomic-write temporaries of ``path`` (``.<name>.*.tmp``) in its folder."""
    return {p.name for p in path.parent.glob(f".{path.name}.*.tmp")}


def _write_begun(path: Path) -> Callable[[], bool]:
    """A test that a write of ``path`` has begun since now: a new temporary of it appeared, or
    ``path`` itself changed (replaced, or written in place)."""
    stale, before = _temporaries(path), _identity(path)
    return lambda: bool(_temporaries(path) - stale) or _identity(path) != before


def _lines(out: Path) -> int:
    """Complete lines of metrics.jsonl (0 when absent)."""
    try:
        return (out / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _epoch_s(out: Path) -> float:
    """The last logged epoch's training time (from its images/s)."""
    last = (out / "metrics.jsonl").read_text().splitlines()[-1]
    return IMAGES_PER_EPOCH / json.loads(last)["train"]["images_per_s"]


def _poll(proc: subprocess.Popen, until) -> bool:
    """Poll ``until()`` every POLL_S while ``proc`` runs; False when it exited first."""
    deadline = time.monotonic() + DEADLINE_S
    while proc.poll() is None:
        if until():
            return True
        assert time.monotonic() < deadline, "no event within the deadline"
        time.sleep(POLL_S)
    return False


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, proc.args


def _launch(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start ``command`` with its output in ``log`` (a pipe nobody reads could fill and block)."""
    with log.open("wb") as f:
        return subprocess.Popen(command, env=env, stdout=f, stderr=subprocess.STDOUT)


def _ended(proc: subprocess.Popen, log: Path) -> None:
    """Wait for ``proc`` and check that it succeeded (returns None)."""
    assert proc.wait(timeout=DEADLINE_S) == 0, log.read_text()[-2000:]


def _attempt(root: Path, out: Path, target: str | None, env: dict[str, str]) -> dict | None:
    """Run ``attreid train`` into ``out`` (resuming when last.pt exists) and SIGKILL it at
    ``target``: "mid-write" as soon as a write of last.pt begins (its temporary appears, or
    last.pt itself changes), "mid-epoch" half an epoch's training after a checkpoint is
    complete (last.pt replaced); a resumed run first completes one checkpoint (to be killed
    after its resume). None: run to the end. Returns what the kill left (None when the run
    ended first): the epoch at launch, this run's complete checkpoints seen, last.pt's epoch,
    the log's lines, the new temporaries and the stale ones still there."""
    last = out / "last.pt"
    start = int(load_checkpoint(last)["epoch"]) if last.exists() else 0
    stale, before = _temporaries(last), _identity(last)
    log = out.with_name(f"{out.name}-{time.monotonic_ns()}.log")
    proc = _launch(_command(root, out, start > 0), log, env)
    if target is None:
        _ended(proc, log)
        return None
    seen = 0
    if start > 0 or target == "mid-epoch":  # a checkpoint of this run is complete
        if not _poll(proc, lambda: _identity(last) != before):
            return _ended(proc, log)
        seen, before = 1, _identity(last)
    if target == "mid-write":
        hit = _poll(proc, _write_begun(last))
    else:
        kill_at = time.monotonic() + 0.5 * _epoch_s(out)
        hit = _poll(proc, lambda: time.monotonic() >= kill_at)
    if not hit:
        return _ended(proc, log)
    _kill(proc)
    return {"start": start, "seen": seen, "epoch": int(load_checkpoint(last)["epoch"]),
            "lines": _lines(out), "new_tmp": _temporaries(last) - stale,
            "stale_left": _temporaries(last) & stale}


def _phases(kill: dict) -> set[str]:
    """The phases a kill provably hit, from what it left behind."""
    start, epoch, lines = kill["start"], kill["epoch"], kill["lines"]
    hit = set()
    if kill["new_tmp"]:  # killed between the temporary's creation and its rename
        assert lines == epoch + 1  # the epoch's log line is written before its checkpoint
        hit.add("mid-write")
    elif epoch > start and lines == epoch:  # this run wrote a checkpoint, the next epoch unlogged
        hit.add("mid-epoch")
    if start > 0 and epoch > start:  # a resumed run finished an epoch before the kill
        hit.add("after resume")
    return hit


def _next_target(missing: list[str], resumed: bool) -> str | None:
    """Where to kill the next run: a fresh run mid-epoch, a resumed one mid-write after its
    first epoch (also "after resume"); two kills hit every phase when none misses."""
    if not missing:
        return None
    return "mid-write" if "mid-write" in missing and (resumed or missing == ["mid-write"]) \
        else "mid-epoch"


def test_sigkill_on_events_then_resume_equals_uninterrupted(crash_root, tmp_path):
    """Kills a run mid-epoch, mid-write of last.pt and after a resume (each proven from the
    files it left), checks after each kill that last.pt loads and that only the epoch in progress
    was lost, then resumes to the end: the log (less timing) and the weights equal an
    uninterrupted run's, and no temporary is left.

    Mutations caught: atomic_write_bytes writing last.pt in place (the mid-write kill leaves a
    torn last.pt: 'cannot read checkpoint'); _resume not restoring the optimizer state, and
    _run_epoch not reseeding torch per epoch (with model.dropout > 0: the resumed log and
    weights differ; without dropout that mutant survived, nothing else drew from torch's RNG);
    _remove_stale_temporaries doing nothing (the mid-write kill's temporary stays)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"  # runs alongside the killed runs
    uninterrupted = _launch(_command(crash_root, reference, False),
                            tmp_path / "reference.log", env)
    out, hits, kills = tmp_path / "killed", set(), []
    while True:
        missing = [p for p in PHASES if p not in hits]
        target = None if len(kills) == KILL_BUDGET else \
            _next_target(missing, resumed=(out / "last.pt").exists())
        kill = _attempt(crash_root, out, target, env)
        if kill is None:
            break
        kills.append(kill)
        hits |= _phases(kill)
        # never torn (it loaded); a kill loses at most the epoch in progress: every epoch whose
        # checkpoint this run completed is kept, and every logged epoch but the last is in it
        assert kill["epoch"] >= kill["start"] + kill["seen"], kills
        assert kill["lines"] - 1 <= kill["epoch"] <= kill["lines"], kills
        if kill["epoch"] > kill["start"]:  # past start-up: a resume removes killed temporaries
            assert not kill["stale_left"], kills
    assert hits == set(PHASES), kills
    _ended(uninterrupted, tmp_path / "reference.log")
    assert not list(out.glob(".*.tmp"))
    assert _records(out) == _records(reference)
    mine, ref = load_checkpoint(out / "last.pt"), load_checkpoint(reference / "last.pt")
    assert mine["epoch"] == ref["epoch"] == 5
    assert mine["model"].keys() == ref["model"].keys()
    assert all(torch.equal(mine["model"][k], v) for k, v in ref["model"].items())
    assert mine["metrics"] == ref["metrics"]


WRITER = textwrap.dedent("""
    import sys, torch
    from attreid.utils.checkpoint import save_checkpoint
    path = sys.argv[1]
    for i in range(1, 10**6):
        # ~16 MB, every value equal to i: a torn file could not pass the check below
        save_checkpoint(path, {"model": {"w": torch.full((4_000_000,), float(i))},
                               "config": {}, "epoch": i})
        print(i, flush=True)
""")


def test_sigkill_during_checkpoint_writes_never_leaves_a_torn_file(tmp_path):
    """WRITE_KILLS kills of a process rewriting last.pt, each when a write begins (its temporary
    appears, or last.pt itself changes) plus 0-5 ms, proven mid-write by the temporary it left;
    last.pt always loads whole, from the last completed write or the one before.

    Mutation caught: atomic_write_bytes writing in place (a torn last.pt fails to load)."""
    path, rng, hits, launches = tmp_path / "last.pt", random.Random(3), 0, 0
    while hits < WRITE_KILLS:
        launches += 1
        assert launches <= 3 * WRITE_KILLS, f"{hits} of {launches - 1} kills were mid-write"
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        done = int(proc.stdout.readline())  # a first write is complete: kill during the next
        stale = _temporaries(path)
        assert _poll(proc, _write_begun(path))
        time.sleep(rng.uniform(0.0, 0.005))
        _kill(proc)
        hits += bool(_temporaries(path) - stale)
        state = load_checkpoint(path)
        w = state["model"]["w"]
        assert state["epoch"] in (done, done + 1)
        assert w.shape == (4_000_000,) and bool((w == state["epoch"]).all())


def test_disk_full_keeps_the_previous_checkpoint_and_says_so(crash_root, tmp_path, monkeypatch):
    """The disk fills at epoch 2's first write (best.pt: epoch 2 validates); 2 epochs are enough
    (a third never ran: the error stops training)."""
    cfg = load_config("demo", [f"data.root={crash_root}", f"train.out={tmp_path / 'run'}",
                               *OVERRIDES, "optim.epochs=2"])
    out = tmp_path / "run"
    real_fsync = os.fsync

    def fsync_until_disk_full(fd: int) -> None:  # last.pt of epoch 1 fits, then the disk is full
        if (out / "last.pt").exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(files_module.os, "fsync", fsync_until_disk_full)
    with pytest.raises(CheckpointError, match="No space left.*previous checkpoint.*unchanged"):
        train(cfg, log=lambda _: None)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # still valid, still epoch 1
    assert not list(out.glob(".*.tmp"))  # the failed write left nothing behind
    monkeypatch.setattr(files_module.os, "fsync", real_fsync)
    resumed = train(cfg, resume=True, log=lambda _: None)  # space again: resume finishes
    reference = train(load_config("demo", [f"data.root={crash_root}",
                                           f"train.out={tmp_path / 'ref'}", *OVERRIDES,
                                           "optim.epochs=2"]), log=lambda _: None)
    assert resumed.epochs == 2
    timing = ("images_per_s", "seconds")
    strip = [{**r, "train": {k: v for k, v in r["train"].items() if k not in timing}}
             for r in resumed.history]
    ref = [{**r, "train": {k: v for k, v in r["train"].items() if k not in timing}}
           for r in reference.history[1:]]
    assert strip == ref


def test_save_checkpoint_failure_message_names_the_file(tmp_path):
    target = tmp_path / "missing-dir-is-a-file"
    target.write_text("x")  # a file where a folder is needed
    with pytest.raises(CheckpointError, match="missing-dir-is-a-file"):
        save_checkpoint(target / "last.pt", {"model": {}, "config": {}})
