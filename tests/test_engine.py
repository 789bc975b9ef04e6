"""Config loading, the training engine, checkpoints, resume and the NaN guard."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import require

from attreid.config import ConfigError, load_config, preset_names, with_updates
from attreid.data.synth import generate
from attreid.models import build_model
from attreid.training.builders import build_cache, build_data, lr_factor, make_loader, model_kwargs
from attreid.training.engine import setup, train
from attreid.training.step import NonFiniteLossError, train_epoch
from attreid.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "market"
    generate(root, ids=16, seed=3, layout="market")
    return root


def tiny_config(root, out, **sections):
    cfg = load_config("demo", [
        f"data.root={root}", "data.p=4", "data.k=2", "data.workers=0",
        "data.batches_per_epoch=3", f"train.out={out}", "train.amp=none",
        "train.channels_last=false", "train.eval_every=1", "optim.epochs=2",
        "optim.warmup_epochs=0",
    ])
    return with_updates(cfg, **sections)


def test_presets_load_and_overrides_apply():
    assert {"seed", "strong", "cpu", "demo"} <= set(preset_names())
    seed = load_config("seed")
    assert (seed.data.p, seed.data.k, seed.optim.lr, seed.optim.epochs) == (34, 10, 3e-4, 50)
    assert seed.model.study_strides and seed.loss.weighting == "uncertainty"
    cfg = load_config("seed", ["optim.lr=1e-3", "optim.step_epochs=[3, 5]", "model.bnneck=true"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.step_epochs == (3, 5) and cfg.model.bnneck


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_builds_its_three_variants(name):
    """Keys, values and backbone options of each shipped preset make a working model (random
    weights: the ImageNet sources are not installed in CI)."""
    for variant in ("resnet", "convhead", "attention"):
        cfg = load_config(name, [f"model.name={variant}", "model.weights=random"])
        model = build_model(**model_kwargs(cfg, num_identities=5)).eval()
        with torch.no_grad():
            out = model(torch.rand(2, 3, cfg.data.height, cfg.data.width))
        assert out.embedding.shape[0] == 2 and len(out.attribute_logits) == 12


@pytest.mark.parametrize("override, message", [
    (["optim.lrr=1"], "unknown keys in section 'optim'"),
    (["optimizer.lr=1"], "unknown config sections"),
    (["optim.lr=fast"], "optim.lr: expected float"),
    (["optim.epochs=2.5"], "optim.epochs: expected int"),
    (["lr=1"], "key must be section.key"),
])
def test_config_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("seed", override)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_preset")


def test_lr_schedule():
    cfg = load_config("strong")  # warm-up 10 epochs, steps at 40 and 70
    assert lr_factor(cfg, 0) == pytest.approx(0.1)
    assert lr_factor(cfg, 10) == 1.0 and lr_factor(cfg, 45) == pytest.approx(0.1)
    assert lr_factor(cfg, 80) == pytest.approx(0.01)
    cos = with_updates(cfg, optim={"scheduler": "cosine", "warmup_epochs": 0, "epochs": 10})
    assert lr_factor(cos, 0) == 1.0 and lr_factor(cos, 5) == pytest.approx(0.5)


def _fixed_batch_loss(parts, batch):
    with torch.no_grad():
        return float(parts.criterion(parts.model(batch["image"]), batch["label"],
                                     batch["attributes"])["loss"])


@pytest.mark.parametrize("variant, cache", [("resnet", False), ("convhead", False),
                                            ("attention", False), ("resnet", True)])
def test_one_epoch_lowers_the_loss(synth_root, tmp_path, variant, cache):
    cfg = tiny_config(synth_root, tmp_path, model={"name": variant},
                      data={"batches_per_epoch": 8, "cache": cache})
    bundle = build_data(cfg)
    parts = setup(cfg, bundle)
    images = build_cache(cfg, bundle.train, log=lambda _: None)
    batch = next(iter(make_loader(cfg, bundle.train, 0, images)))
    before = _fixed_batch_loss(parts, batch)
    terms = train_epoch(cfg, parts, make_loader(cfg, bundle.train, 0, images), 0, tmp_path)
    assert _fixed_batch_loss(parts, batch) < before
    assert {"loss", "reid", "attr", "triplet", "attr/hat"} <= set(terms)


def test_train_writes_checkpoints_and_metrics(synth_root, tmp_path):
    cfg = tiny_config(synth_root, tmp_path / "run")
    result = train(cfg, log=lambda _: None)
    out = tmp_path / "run"
    assert result.epochs == 2
    for name in ("last.pt", "best.pt", "config.yaml", "metrics.jsonl"):
        assert (out / name).is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    val = lines[-1]["val"]
    assert 0 <= val["mAP"] <= 1 and set(val["accuracy"]) >= {"age", "downcolor"}
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and state["config"]["data"]["root"] == str(synth_root)
    assert load_config(out / "config.yaml") == cfg
    assert not list(out.glob(".*.tmp"))
    require("tensorboard", "TensorBoard logging needs tensorboard (attreid[dev])")
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.parametrize("cache", [False, True])
def test_resume_equals_uninterrupted(synth_root, tmp_path, cache):
    full = tiny_config(synth_root, tmp_path / "full", optim={"epochs": 3}, data={"cache": cache})
    train(full, log=lambda _: None)
    part = tiny_config(synth_root, tmp_path / "part", optim={"epochs": 1}, data={"cache": cache})
    train(part, log=lambda _: None)
    resumed = with_updates(part, optim={"epochs": 3})
    result = train(resumed, resume=True, log=lambda _: None)
    assert [h["epoch"] for h in result.history] == [2, 3]
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    log = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log] == [1, 2, 3]


def test_resume_refuses_a_different_model(synth_root, tmp_path):
    cfg = tiny_config(synth_root, tmp_path, optim={"epochs": 1})
    train(cfg, log=lambda _: None)
    other = with_updates(cfg, model={"embedding_dim": 64}, optim={"epochs": 2})
    with pytest.raises(ConfigError, match=r"cannot resume, the config differs from the "
                       r"checkpoint's in 1 key\(s\): model\.embedding_dim: 128 \(checkpoint\) "
                       r"vs 64 \(now\)\. "):
        train(other, resume=True, log=lambda _: None)


def test_resume_compares_paths_by_the_folder_they_name(synth_root, tmp_path, monkeypatch):
    """Issue 15, fault 6: trained with an absolute --data, resumed from the data's parent
    folder with a relative one; differing keys are each named with both values."""
    cfg = tiny_config(synth_root.resolve(), tmp_path / "run", optim={"epochs": 1})
    train(cfg, log=lambda _: None)
    monkeypatch.chdir(synth_root.parent)
    relative = with_updates(cfg, data={"root": synth_root.name}, optim={"epochs": 2})
    assert train(relative, resume=True, log=lambda _: None).epochs == 2
    other = with_updates(relative, data={"root": f"./{synth_root.name}/", "p": 2, "k": 4},
                         optim={"epochs": 3})
    with pytest.raises(ConfigError) as info:
        train(other, resume=True, log=lambda _: None)
    message = str(info.value)
    assert "in 2 key(s): data.k: 2 (checkpoint) vs 4 (now); data.p: 4 (checkpoint) vs 2 " \
        "(now)." in message
    assert "data.root" not in message


def test_nan_loss_stops_with_a_clear_message(synth_root, tmp_path, monkeypatch):
    cfg = tiny_config(synth_root, tmp_path, optim={"epochs": 2})
    train(with_updates(cfg, optim={"epochs": 1}), log=lambda _: None)
    good = load_checkpoint(tmp_path / "last.pt")["model"]
    from attreid.training import losses

    original = losses.MultiTaskLoss.forward

    def poisoned(self, output, labels, attributes):
        terms = original(self, output, labels, attributes)
        terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(losses.MultiTaskLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at epoch 2, step 1"):
        train(cfg, resume=True, log=lambda _: None)
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 1  # the last complete epoch is untouched
    torch.testing.assert_close(last["model"], good)
    rescued = load_checkpoint(tmp_path / "before_nonfinite.pt")["model"]
    assert all(torch.isfinite(v).all() for v in rescued.values() if v.is_floating_point())


def test_checkpoint_write_failure_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, "config": {}})
    import attreid.utils.files as files

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(files.os, "replace", disk_full)
    with pytest.raises(CheckpointError, match="previous checkpoint, if any, is unchanged"):
        save_checkpoint(path, {"model": {"w": torch.zeros(2)}, "config": {}})
    assert load_checkpoint(path)["model"]["w"].tolist() == [1.0, 1.0]
    assert not list(tmp_path.glob(".*.tmp"))
    path.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)
