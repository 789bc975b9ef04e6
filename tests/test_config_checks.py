"""Config checks up front (issue 15, faults 4 and 5): settings that could only fail inside the
run, or that would zero a configured loss term for the whole run, are refused before any data
is read or any process starts, naming the keys to change."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

from attreid.cli import app
from attreid.config import ConfigError, load_config, with_updates
from attreid.training.checks import check_training_config
from attreid.training.engine import train


def test_nproc_batch_of_one_image_per_process_is_refused_before_torchrun(tmp_path):
    start = time.perf_counter()
    result = CliRunner().invoke(app, [
        "train", "-c", "demo", "--data", str(tmp_path / "absent"), "--out", str(tmp_path / "x"),
        "--set", "data.p=2", "--set", "data.k=1", "--nproc", "2"])
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert ("a batch of 1 image per process (data.p / --nproc x data.k = 2/2 x 1): batch norm "
            "needs at least 2 in training; raise data.k, use fewer processes (--nproc) or set "
            "train.sync_bn=true") in text
    assert "data.k=1: no batch holds two images" in text  # the demo's triplet-only loss too
    assert not (tmp_path / "x").exists() and time.perf_counter() - start < 30


@pytest.mark.parametrize("processes, sync_bn", [(1, False), (2, False), (2, True)])
def test_two_images_per_process_are_enough(processes, sync_bn):
    """2 x 2 images in one process, 1 x 2 per process in two: no error, no warning."""
    cfg = load_config("demo", ["data.p=2", "data.k=2", f"train.sync_bn={str(sync_bn).lower()}"])
    assert check_training_config(cfg, processes) == []


def test_sync_bn_makes_a_share_of_one_image_fine():
    """With the ID loss training re-ID, k=1 runs: one warning, and under sync BN the global
    batch (2 x 1) is what batch norm sees."""
    cfg = load_config("cpu", ["data.p=2", "data.k=1", "train.sync_bn=true"])
    warnings = check_training_config(cfg, processes=2)
    assert warnings == ["data.k=1: no batch holds two images of one identity, so the triplet "
                        "loss is 0 at every step; only the ID loss trains re-ID (set data.k >= "
                        "2, e.g. --set data.k=4, to train the triplet term)"]
    with pytest.raises(ConfigError, match="a batch of 1 image per process"):
        check_training_config(with_updates(cfg, train={"sync_bn": False}), processes=2)


def test_k1_with_a_triplet_only_loss_is_refused_before_reading_data(tmp_path):
    """The demo and seed presets train re-ID with the triplet term only: k=1 zeroes it."""
    for preset in ("demo", "seed"):
        cfg = load_config(preset, [f"data.root={tmp_path / 'absent'}", "data.k=1",
                                   f"train.out={tmp_path / preset}"])
        with pytest.raises(ConfigError, match=r"^data\.k=1: no batch holds two images .* re-ID "
                                              r"would not be trained at all; set data\.k >= 2"):
            train(cfg, log=lambda _: None)
        assert not (tmp_path / preset).exists()  # refused before the data or any file


def test_an_id_weight_without_an_id_head_warns():
    cfg = load_config("demo", ["loss.id_weight=1.0"])
    assert check_training_config(cfg) == [
        "loss.id_weight=1.0 but model.id_head=false: there is no ID loss; set "
        "model.id_head=true to train it"]


@pytest.mark.parametrize("override, message", [
    ("train.eval_every=0", "train.eval_every=0: at least 1 epoch between validations"),
    ("optim.scheduler=linear", "optim.scheduler='linear': expected one of none, cosine, step"),
    ("optim.name=lamb", "optim.name='lamb': expected one of adam, adamw, sgd"),
    ("model.pooling=max", "model.pooling='max': expected one of avg, gem"),
    ("loss.triplet=semi_hard", "loss.triplet='semi_hard': expected one of batch_all, "
                               "batch_hard"),
    ("data.p=1", "data.p=1: at least 2 identities per batch"),
    ("optim.epochs=0", "optim.epochs=0: at least 1 epoch"),
])
def test_late_failures_are_refused_up_front(tmp_path, override, message):
    """Each of these failed only after caching the data (scheduler), at the end of epoch 1
    (eval_every=0: modulo by zero) or inside the first step."""
    cfg = load_config("demo", [override, f"data.root={tmp_path / 'absent'}"])
    with pytest.raises(ConfigError) as info:
        train(cfg, log=lambda _: None)
    assert str(info.value).startswith(message)


def test_every_problem_is_named_at_once():
    cfg = load_config("demo", ["optim.name=lamb", "train.eval_every=0"])
    with pytest.raises(ConfigError, match=r"^2 problems in the config: optim\.name='lamb'.*; "
                                          r"train\.eval_every=0"):
        check_training_config(cfg)


@pytest.mark.parametrize("preset", ["seed", "strong", "cpu", "study_cpu", "demo"])
def test_shipped_presets_pass(preset):
    assert check_training_config(load_config(preset)) == []


def test_one_camera_data_is_refused_before_training(custom_runs, tmp_path):
    """All images from one camera: the market protocol's validation has no valid query. Found
    before any image is decoded (it used to fail after the first epoch, epoch lost), with the
    training keys that fix it; the fix works."""
    import csv

    data, _ = custom_runs["reid_only"]
    onecam = tmp_path / "onecam"
    import shutil

    shutil.copytree(data, onecam)
    rows = list(csv.DictReader((onecam / "labels.csv").open()))
    for row in rows:
        row["camid"] = "1"
    with (onecam / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg = load_config("demo", [f"data.root={onecam}", f"train.out={tmp_path / 'run'}",
                               "optim.epochs=1", "data.batches_per_epoch=2",
                               "train.tensorboard=false"])
    from attreid.data.records import DataError

    with pytest.raises(DataError, match=r"no validation query has a match .* one camera for all "
                                        r"images .* --set data\.split=random --set data\.val_ids"):
        train(cfg, log=lambda _: None)
    assert not (tmp_path / "run" / "last.pt").exists()
    lines = []
    fixed = with_updates(cfg, data={"split": "random", "val_ids": 2, "p": 4})
    assert train(fixed, log=lines.append).epochs == 1
    assert any(line.startswith("warning: the training data has no attribute labels")
               for line in lines)


def test_p_above_the_identities_is_refused_before_torchrun(synth_market, tmp_path):
    result = CliRunner().invoke(app, [
        "train", "-c", "cpu", "--data", str(synth_market), "--out", str(tmp_path / "x"),
        "--set", "model.weights=random", "--set", "data.p=40", "--nproc", "2"])
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and "Traceback" not in text
    assert "data.p=40 identities per batch, but the training split holds only 8; set data.p <= 8" \
        in text
    assert not (tmp_path / "x").exists()
