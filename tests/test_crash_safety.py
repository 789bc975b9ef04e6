"""Crash-safe training: SIGKILL at random points (mid-epoch, mid-checkpoint write) and a full disk
never leave a corrupt checkpoint, lose at most the current epoch, and resuming gives exactly the
uninterrupted run."""

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
from pathlib import Path

import pytest
import torch

from attreid.config import load_config
from attreid.data.synth import generate
from attreid.training.engine import train
from attreid.utils import checkpoint as checkpoint_module
from attreid.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

KILLS = 6  # SIGKILLs of a training run (seeded random delays)
WRITE_KILLS = 8  # SIGKILLs of a process rewriting a checkpoint in a loop

OVERRIDES = ["data.p=4", "data.k=2", "data.batches_per_epoch=4", "data.workers=0",
             "train.amp=none", "train.channels_last=false", "train.eval_every=2",
             "train.tensorboard=false", "optim.epochs=5", "optim.warmup_epochs=1"]


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
    return records


def _command(root: Path, out: Path, resume: bool) -> list[str]:
    return [str(Path(sys.executable).parent / "attreid"), "train", "-c", "demo", "--data",
            str(root), "--out", str(out), *(f"--set={o}" for o in OVERRIDES),
            *(["--resume"] if resume else [])]


def _assert_valid_or_absent(path: Path) -> int:
    """The epoch of the checkpoint at ``path`` (0 when absent); fails if it cannot be read."""
    if not path.exists():
        return 0
    return int(load_checkpoint(path)["epoch"])


def _train_with_kills(root: Path, out: Path, rng: random.Random, span: float, budget: int,
                      env: dict[str, str]) -> int:
    """Train into ``out``, SIGKILLing each attempt at a random point of the run (a fraction of
    ``span``, the uninterrupted run's wall time on this machine) and resuming, until the run
    completes; at most ``budget`` kills. Returns the number of kills."""
    epochs_done, kills, resume = 0, 0, False
    while True:
        proc = subprocess.Popen(_command(root, out, resume), env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if kills < budget:
            try:  # start-up (imports), an epoch, validation or a checkpoint write
                proc.wait(timeout=rng.uniform(0.25, 0.95) * span)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
        if proc.wait(timeout=600) == 0:
            return kills
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
        epoch = _assert_valid_or_absent(out / "last.pt")  # never corrupt
        assert epoch >= epochs_done  # a kill loses at most the epoch in progress
        epochs_done, resume = epoch, (out / "last.pt").exists()


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(crash_root, tmp_path):
    """KILLS kills in all; the kill times scale with this machine's speed, and a run that ends
    before its next kill is checked and followed by a fresh one, so a fast CPU cannot skip
    kills (it did: 3 of 6 on an AMD EPYC with fixed 2-7 s delays)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = tmp_path / "reference"
    start = time.perf_counter()
    subprocess.run(_command(crash_root, reference, False), env=env, check=True,
                   capture_output=True, timeout=600)
    span = time.perf_counter() - start
    rng, kills, runs = random.Random(8), 0, 0
    ref = load_checkpoint(reference / "last.pt")
    while kills < KILLS:
        out = tmp_path / f"killed{runs}"
        kills += _train_with_kills(crash_root, out, rng, span, KILLS - kills, env)
        runs += 1
        assert not list(out.glob(".*.tmp"))  # a killed write's temporary is removed on resume
        assert _records(out) == _records(reference)
        mine = load_checkpoint(out / "last.pt")
        assert mine["epoch"] == ref["epoch"] == 5
        assert all(torch.equal(mine["model"][k], v) for k, v in ref["model"].items())
        assert mine["metrics"] == ref["metrics"]
    assert kills == KILLS


WRITER = textwrap.dedent("""
    import sys, torch
    from attreid.checkpoint import save_checkpoint
    path = sys.argv[1]
    for i in range(1, 10**6):
        # ~16 MB, every value equal to i: a torn file could not pass the check below
        save_checkpoint(path, {"model": {"w": torch.full((4_000_000,), float(i))},
                               "config": {}, "epoch": i})
        print(i, flush=True)
""")


def test_sigkill_during_checkpoint_writes_never_leaves_a_torn_file(tmp_path):
    path, rng = tmp_path / "last.pt", random.Random(3)
    last_epoch = 0
    for _ in range(WRITE_KILLS):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.readline()  # the first write is complete: kill during the next ones
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(path)
        w = state["model"]["w"]
        assert w.numel() == 4_000_000 and bool((w == state["epoch"]).all())
        last_epoch = max(last_epoch, state["epoch"])
    assert last_epoch >= 1


def test_disk_full_keeps_the_previous_checkpoint_and_says_so(crash_root, tmp_path, monkeypatch):
    cfg = load_config("demo", [f"data.root={crash_root}", f"train.out={tmp_path / 'run'}",
                               *OVERRIDES, "optim.epochs=3"])
    out = tmp_path / "run"
    real_fsync = os.fsync

    def fsync_until_disk_full(fd: int) -> None:  # last.pt of epoch 1 fits, then the disk is full
        if (out / "last.pt").exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(checkpoint_module.os, "fsync", fsync_until_disk_full)
    with pytest.raises(CheckpointError, match="No space left.*previous checkpoint.*unchanged"):
        train(cfg, log=lambda _: None)
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # still valid, still epoch 1
    assert not list(out.glob(".*.tmp"))  # the failed write left nothing behind
    monkeypatch.setattr(checkpoint_module.os, "fsync", real_fsync)
    resumed = train(cfg, resume=True, log=lambda _: None)  # space again: resume finishes
    reference = train(load_config("demo", [f"data.root={crash_root}",
                                           f"train.out={tmp_path / 'ref'}", *OVERRIDES,
                                           "optim.epochs=3"]), log=lambda _: None)
    assert resumed.epochs == 3
    strip = [{**r, "train": {k: v for k, v in r["train"].items() if k != "images_per_s"}}
             for r in resumed.history]
    ref = [{**r, "train": {k: v for k, v in r["train"].items() if k != "images_per_s"}}
           for r in reference.history[1:]]
    assert strip == ref


def test_save_checkpoint_failure_message_names_the_file(tmp_path):
    target = tmp_path / "missing-dir-is-a-file"
    target.write_text("x")  # a file where a folder is needed
    with pytest.raises(CheckpointError, match="missing-dir-is-a-file"):
        save_checkpoint(target / "last.pt", {"model": {}, "config": {}})
