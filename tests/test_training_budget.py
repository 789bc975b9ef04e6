"""Per-machine training choices: ``train.amp=auto`` settled by a measured probe on CPUs with
native bf16 (:mod:`attreid.training.precision`) and the epochs fitted to
``train.time_budget_min`` (:mod:`attreid.training.budget`); both recorded and kept on resume."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import yaml

from attreid.config import ConfigError, load_config, with_updates
from attreid.data.synth import generate
from attreid.training import engine, precision
from attreid.training.budget import plan_epochs
from attreid.training.builders import build_data, lr_factor
from attreid.training.engine import setup, train
from attreid.training.precision import choose_precision, probe_precision


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "market"
    generate(root, ids=12, seed=5, layout="market")
    return root


def _config(root, out, *extra: str):
    return load_config("demo", [
        f"data.root={root}", "data.p=4", "data.k=2", "data.workers=0",
        "data.batches_per_epoch=2", f"train.out={out}", "train.amp=none",
        "train.eval_every=2", "optim.epochs=3", "optim.warmup_epochs=1",
        "train.tensorboard=false", *extra])


# ------------------------------------------------------------------ the plan, by brute force


def _brute_force_epochs(budget, elapsed, epoch_s, val_s, max_epochs, every, validated1):
    """Walk the run epoch by epoch and keep the longest prefix that fits."""
    best = 1
    for n in range(1, max_epochs + 1):
        total = elapsed
        for e in range(2, n + 1):
            total += epoch_s
            if e % every == 0 or e == n:
                total += val_s
        if n == 1 and not validated1:
            total += val_s  # the last epoch validates
        if total <= budget:
            best = n
    return best


@pytest.mark.parametrize("every, validated1", [(1, True), (3, False), (8, False)])
def test_planned_epochs_are_the_most_that_fit(every, validated1):
    for budget, epoch_s, val_s in itertools.product([50.0, 600.0, 3600.0], [7.0, 100.0],
                                                    [0.0, 45.0]):
        elapsed = 30.0 + epoch_s + (val_s if validated1 else 0)
        plan = plan_epochs(budget, elapsed, epoch_s, val_s, 32, every, validated1)
        want = _brute_force_epochs(budget, elapsed, epoch_s, val_s, 32, every, validated1)
        assert plan.epochs == want, (budget, epoch_s, val_s)
        if plan.epochs > 1:
            assert plan.estimate_s <= budget


def test_the_cpu_preset_fits_its_hour_on_the_machine_it_was_measured_on():
    """docs/RESULTS.md part 2 (AMD EPYC): about 100 s an epoch, 45 s a validation every 8
    epochs, a minute of set-up: the 32 epochs fit 60 minutes; at 4x slower, 8 do."""
    cpu = load_config("cpu")
    assert cpu.train.time_budget_min == 60 and cpu.optim.epochs == 32
    args = dict(max_epochs=32, eval_every=cpu.train.eval_every, validated_epoch1=False)
    assert plan_epochs(3600, 60 + 100, 100, 45, **args).epochs == 32
    slow = plan_epochs(3600, 240 + 400, 400, 180, **args)
    assert slow.epochs == 7  # 640 + 6 x 400 + 1 x 180 (epoch 7 is the last) = 3220 s
    assert math.isclose(slow.estimate_s, 640 + 6 * 400 + 180)


def test_first_epoch_learning_rate_does_not_depend_on_the_epoch_count():
    """Why fixing the epochs after epoch 1 changes no step already taken."""
    for overrides in ({"warmup_epochs": 2, "scheduler": "cosine"},
                      {"warmup_epochs": 0, "scheduler": "cosine"},
                      {"warmup_epochs": 0, "scheduler": "step", "step_epochs": (5,)}):
        factors = {lr_factor(with_updates(load_config("cpu"), optim={**overrides, "epochs": n}),
                             0) for n in (1, 2, 7, 32)}
        assert len(factors) == 1, overrides


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_a_bad_budget_is_refused_before_training(synth_root, tmp_path, value):
    cfg = _config(synth_root, tmp_path / "bad", f"train.time_budget_min={value}")
    with pytest.raises(ConfigError, match="train.time_budget_min"):
        train(cfg, log=lambda _: None)
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------ the budget in the engine


class _Stop(Exception):
    pass


def _stop_in_epoch(n):
    def on_step(epoch, step, steps, values):
        if epoch + 1 == n:
            raise _Stop
    return on_step


def test_a_budget_run_runs_its_plan_and_resume_keeps_it(synth_root, tmp_path):
    out = tmp_path / "budget"
    cfg = _config(synth_root, out, "train.time_budget_min=600")  # room for all 3 epochs
    with pytest.raises(_Stop):
        train(cfg, log=lambda _: None, on_step=_stop_in_epoch(2))
    first = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    plan = first["plan"]
    assert plan["epochs"] == 3 and plan["budget_s"] == 36000
    assert plan["epoch_s"] == round(first["train"]["seconds"], 1)
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["epochs"] == 3
    # a resume with a budget that would plan one epoch keeps the run's own plan
    lines = []
    tight = with_updates(cfg, train={"time_budget_min": 1e-6})
    result = train(tight, resume=True, log=lines.append)
    assert result.epochs == 3 and "time budget: 3 epoch(s), as planned after epoch 1" in lines


def test_a_budget_that_fits_one_epoch_stops_after_it_and_validates_it(synth_root, tmp_path):
    out = tmp_path / "tight"
    lines = []
    result = train(_config(synth_root, out, "train.time_budget_min=1e-6"), log=lines.append)
    assert result.epochs == 1
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["plan"]["epochs"] == 1 and "val" in record  # eval_every=2, yet validated
    assert (out / "best.pt").exists()
    assert any(line.startswith("time budget 1e-06 min: epoch 1 took") and
               "1 epoch(s) planned" in line for line in lines)
    assert yaml.safe_load((out / "config.yaml").read_text())["optim"]["epochs"] == 1


# ------------------------------------------------------------------ the precision probe


@pytest.mark.parametrize("rates, chosen", [
    ({"none": 100.0, "bf16": 200.0}, "bf16"),
    ({"none": 100.0, "bf16": 105.0}, "bf16"),
    ({"none": 100.0, "bf16": 104.9}, "none"),   # within the margin: the more exact one
    ({"none": 100.0, "bf16": 80.0}, "none"),
    ({"none": 100.0, "bf16": None}, "none"),    # bf16 not finite
    ({"none": None, "bf16": 300.0}, "none"),    # float32 not finite: the engine's own error
])
def test_choice_follows_the_measured_rates(rates, chosen):
    assert choose_precision(rates) == chosen


def _parts(root, tmp_path, *extra):
    cfg = _config(root, tmp_path / "probe", "train.channels_last=true", *extra)
    bundle = build_data(cfg)
    return cfg, bundle, setup(cfg, bundle)


def test_probe_measures_both_and_leaves_the_run_untouched(synth_root, tmp_path):
    cfg, bundle, parts = _parts(synth_root, tmp_path, "model.dropout=0.2")
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(4)
    torch.manual_seed(123)
    rates = probe_precision(cfg, parts.model, parts.criterion, parts.device,
                            bundle.train.num_classes)
    assert set(rates) == {"none", "bf16"} and all(r is not None and r > 0
                                                  for r in rates.values())
    assert torch.equal(torch.rand(4), expected_next)  # the global RNG is where it was
    after = parts.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert all(p.grad is None for p in parts.model.parameters())


def test_probe_reports_a_precision_that_is_not_finite(synth_root, tmp_path):
    cfg, bundle, parts = _parts(synth_root, tmp_path)
    conv = next(m for m in parts.model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: o * float("nan")
                               if torch.is_autocast_enabled("cpu") else o)
    rates = probe_precision(cfg, parts.model, parts.criterion, parts.device,
                            bundle.train.num_classes)
    assert rates["bf16"] is None and rates["none"] > 0
    assert choose_precision(rates) == "none"


@pytest.mark.parametrize("faster", ["none", "bf16"])
def test_auto_is_what_the_probe_measured_and_resume_keeps_it(synth_root, tmp_path, monkeypatch,
                                                             faster):
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: True)
    rates = {"none": 100.0, "bf16": 300.0} if faster == "bf16" else {"none": 100.0,
                                                                      "bf16": 50.0}
    monkeypatch.setattr(engine, "probe_precision", lambda *a, **k: dict(rates))
    out = tmp_path / f"auto-{faster}"
    cfg = _config(synth_root, out, "train.amp=auto")
    lines = []
    with pytest.raises(_Stop):
        train(cfg, log=lines.append, on_step=_stop_in_epoch(2))
    assert any(line.startswith(f"precision: {precision.NAMES[faster]} (train.amp=auto, "
                               "measured on this CPU") for line in lines)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["amp"] == faster
    record = json.loads((out / "metrics.jsonl").read_text())
    assert ("bf16_steps_in_fp32" in record["train"]) is (faster == "bf16")  # what ran
    other = {"none": rates["bf16"], "bf16": rates["none"]}  # the probe would now flip
    monkeypatch.setattr(engine, "probe_precision", lambda *a, **k: dict(other))
    lines = []
    train(cfg, resume=True, log=lines.append)
    assert any("as measured when the run started" in line for line in lines)
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["amp"] == faster
