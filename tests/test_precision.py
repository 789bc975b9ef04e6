"""CPU precision on every machine: the oneDNN ISA cap (no AMX bf16 kernels) and the guard that
recomputes a bf16 step or batch in float32 when it is not finite (docs/RELIABILITY.md, "CPU
bf16"). Non-finite bf16 values are injected where they were seen on Intel AMX (a convolution's
output under autocast), so these tests fail on any machine if the guard breaks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from attreid import cli
from attreid.config import ConfigError, load_config, with_updates
from attreid.data.synth import generate
from attreid.data.transforms import transform_config
from attreid.errors import AttreidError
from attreid.inference.extraction import extract, resolve_amp
from attreid.training.builders import build_data, make_loader
from attreid.training.engine import setup, train
from attreid.training.step import NonFiniteLossError, train_epoch
from attreid.utils.backend import ONEDNN_ISA_CAP, cap_onednn_isa, cpu_bf16_native, cpu_flags


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "market"
    generate(root, ids=12, seed=5, layout="market")
    return root


def _config(root, out, amp: str):
    return load_config("demo", [
        f"data.root={root}", "data.p=4", "data.k=2", "data.workers=0",
        "data.batches_per_epoch=3", f"train.out={out}", f"train.amp={amp}",
        "train.channels_last=true", "train.eval_every=1", "optim.epochs=2",
        "optim.warmup_epochs=0", "train.tensorboard=false"])


def _poison_under_autocast(module: torch.nn.Module, when=lambda call: True):
    """Make ``module`` return NaN under CPU autocast on the calls ``when`` accepts (counted
    from 0), as the AMX bf16 convolution did; float32 calls are left alone."""
    calls = {"n": 0, "poisoned": 0}

    def hook(_module, _inputs, output):
        if not torch.is_autocast_enabled("cpu"):
            return output
        calls["n"] += 1
        if not when(calls["n"] - 1):
            return output
        calls["poisoned"] += 1
        return output * float("nan")

    module.register_forward_hook(hook)
    return calls


def _first_conv(model: torch.nn.Module) -> torch.nn.Module:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def _state(parts):
    return {k: v.detach().clone() for k, v in parts.model.state_dict().items()}


def _one_step(cfg, batch, poison: str = ""):
    """Set up a model from cfg's seed, train one step on ``batch``; returns (result, state)."""
    bundle = build_data(cfg)
    parts = setup(cfg, bundle)
    if poison == "forward":
        _poison_under_autocast(_first_conv(parts.model))
    elif poison == "gradient":  # the first backward gives a NaN gradient, with a finite loss
        seen = {"n": 0}

        def hook(grad):
            seen["n"] += 1
            return grad * float("nan") if seen["n"] == 1 else grad

        _first_conv(parts.model).weight.register_hook(hook)
    result = train_epoch(cfg, parts, [batch], 0, cfg.train.out)
    return result, _state(parts)


def _batch(cfg):
    bundle = build_data(cfg)
    return next(iter(make_loader(cfg, bundle.train, 0)))


@pytest.mark.parametrize("poison", ["forward", "gradient"])
def test_a_nonfinite_bf16_step_is_the_float32_step(synth_root, tmp_path, poison):
    """The recomputed step leaves weights, Adam state and batch-norm statistics exactly where a
    float32 step from the same state puts them (same machine, same kernels: exact)."""
    bf16 = _config(synth_root, tmp_path, "bf16")
    fp32 = _config(synth_root, tmp_path, "none")
    batch = _batch(fp32)
    result, guarded = _one_step(bf16, batch, poison)
    _, reference = _one_step(fp32, batch)
    assert result["bf16_steps_in_fp32"] == 1
    assert guarded.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(guarded[key], value, rtol=0, atol=0, msg=key)
    assert any("running_mean" in k for k in reference)  # batch-norm statistics were compared


def test_a_finite_bf16_step_is_not_recomputed(synth_root, tmp_path):
    bf16 = _config(synth_root, tmp_path, "bf16")
    fp32 = _config(synth_root, tmp_path, "none")
    batch = _batch(fp32)
    result, state = _one_step(bf16, batch)
    _, reference = _one_step(fp32, batch)
    assert result["bf16_steps_in_fp32"] == 0
    changed = [k for k in reference if reference[k].is_floating_point()
               and not torch.equal(state[k], reference[k])]
    assert changed  # a real bf16 step, not a float32 one


def test_float32_nan_gradients_stop_before_the_weights_change(synth_root, tmp_path):
    cfg = _config(synth_root, tmp_path, "none")
    batch = _batch(cfg)
    bundle = build_data(cfg)
    parts = setup(cfg, bundle)
    before = _state(parts)
    _first_conv(parts.model).weight.register_hook(lambda g: g * float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradients at epoch 1, step 1"):
        train_epoch(cfg, parts, [batch], 0, tmp_path)
    for key, value in before.items():
        assert torch.equal(_state(parts)[key], value), key


def test_bf16_run_with_intermittent_nan_completes(synth_root, tmp_path, monkeypatch):
    """Every third bf16 forward pass of the first convolution is NaN, as the AMX kernel was
    (a different step each run): the run finishes, logs the recomputed steps, validates."""
    cfg = _config(synth_root, tmp_path, "bf16")
    from attreid.training import engine

    built = engine.build_model
    counts = {}

    def poisoned_model(**kwargs):
        model = built(**kwargs)
        counts.update(_poison_under_autocast(_first_conv(model), lambda call: call % 3 == 1))
        return model

    monkeypatch.setattr(engine, "build_model", poisoned_model)
    lines = []
    result = train(cfg, log=lines.append)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    redone = sum(r["train"]["bf16_steps_in_fp32"] for r in records)
    assert result.epochs == 2 and redone >= 1
    assert "recomputed in float32" in "\n".join(lines)
    assert all(torch.isfinite(v).all() for v in result_state(tmp_path).values())
    assert all(r["val"]["mAP"] > 0 for r in records)  # validation ran on finite embeddings


def result_state(out):
    from attreid.utils.checkpoint import load_checkpoint

    state = load_checkpoint(out / "last.pt")["model"]
    return {k: v for k, v in state.items() if v.is_floating_point()}


def test_bf16_extraction_recomputes_nonfinite_batches_in_float32(synth_root, tmp_path):
    cfg = _config(synth_root, tmp_path, "none")
    bundle = build_data(cfg)
    model = setup(cfg, bundle).model.eval()
    records = bundle.val.gallery[:20]
    kwargs = dict(transform=transform_config(cfg), device=torch.device("cpu"), batch_size=8)
    reference = extract(model, records, **kwargs)
    calls = _poison_under_autocast(_first_conv(model), lambda call: call == 1)  # 2nd batch
    got = extract(model, records, amp="bf16", **kwargs)
    assert calls["poisoned"] == 1
    assert torch.isfinite(got.embeddings).all()
    # the poisoned batch (images 8-15) is the float32 result exactly; the others are bf16
    torch.testing.assert_close(got.embeddings[8:16], reference.embeddings[8:16], rtol=0, atol=0)
    assert not torch.equal(got.embeddings[:8], reference.embeddings[:8])


# ------------------------------------------------------------------ the oneDNN ISA cap


def test_cap_keeps_a_users_own_limit():
    assert cap_onednn_isa({}) == ONEDNN_ISA_CAP
    env = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    assert cap_onednn_isa(env) == "AVX2" and env == {"ONEDNN_MAX_CPU_ISA": "AVX2"}
    env = {"DNNL_MAX_CPU_ISA": "ALL"}
    assert cap_onednn_isa(env) == "ALL" and "ONEDNN_MAX_CPU_ISA" not in env


_PROBE = """
import attreid, os, torch
conv = torch.nn.Conv2d(256, 512, 3, padding=1).to(memory_format=torch.channels_last)
x = torch.randn(2, 256, 4, 2).contiguous(memory_format=torch.channels_last)
with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
    y = conv(x)
print("LIMIT", os.environ.get("ONEDNN_MAX_CPU_ISA"), bool(torch.isfinite(y).all()))
with torch.no_grad():  # a CPU without bf16 (AVX2 only) runs the bf16 one outside oneDNN:
    conv(x)            # this float32 one makes oneDNN print the ISA it runs at
"""


def test_import_caps_onednn_before_its_first_kernel():
    """In a fresh process ``import attreid`` sets the cap, and oneDNN's verbose log shows no
    AMX kernel for a bf16 convolution (on an AMD CPU there is none anyway; on an Intel Xeon
    with AMX this is the check that the cap took effect)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA",
                                                          "DNNL_MAX_CPU_ISA")}
    env["ONEDNN_VERBOSE"] = "1"
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert f"LIMIT {ONEDNN_ISA_CAP} True" in out
    kernels = [line for line in out.splitlines() if ",exec,cpu," in line]
    assert not any("amx" in line.lower() for line in kernels), kernels[:3]
    isa = [line for line in out.splitlines() if ",info,cpu,isa:" in line]
    assert isa and "AMX" not in isa[0]


# ------------------------------------------------------------------ named errors in the CLI


def test_named_error_is_one_paragraph_and_exit_1(monkeypatch, capsys, tmp_path):
    import attreid.cli.demo as demo

    def fail(*_args, **_kwargs):
        raise NonFiniteLossError("non-finite loss at epoch 1, step 4: {'triplet': nan}.")

    monkeypatch.setattr(demo, "run_demo", fail)
    monkeypatch.delenv("ATTREID_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["demo", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert "error: non-finite loss at epoch 1, step 4" in out and "Traceback" not in out
    monkeypatch.setenv("ATTREID_DEBUG", "1")  # the traceback, on request
    with pytest.raises(NonFiniteLossError):
        cli.run(["demo", "--out", str(tmp_path)])


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    import attreid.cli.demo as demo

    def bug(*_args, **_kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(demo, "run_demo", bug)
    with pytest.raises(ZeroDivisionError):
        cli.run(["demo", "--out", str(tmp_path)])


def test_every_named_error_shares_the_base():
    from attreid.config import ConfigError
    from attreid.data.records import DataError
    from attreid.evaluation.compare import CompareError
    from attreid.inference.features import FeatureStoreError
    from attreid.inference.onnx import ExportError
    from attreid.schema import AttributeCodeError
    from attreid.search import GalleryIndexError, QueryError
    from attreid.utils.checkpoint import CheckpointError

    for error in (CheckpointError, CompareError, ConfigError, DataError, ExportError,
                  FeatureStoreError, AttributeCodeError, GalleryIndexError, QueryError,
                  NonFiniteLossError):
        assert issubclass(error, AttreidError), error


def test_fp16_on_cpu_is_refused_before_training(synth_root, tmp_path):
    """fp16 autocast is for CUDA: refused before any data is read, naming the fix."""
    cfg = with_updates(_config(synth_root, tmp_path, "none"), train={"amp": "fp16",
                                                                      "device": "cpu"})
    with pytest.raises(ConfigError, match="train.amp=fp16 needs a CUDA device; use bf16"):
        train(with_updates(cfg, data={"root": str(tmp_path / "absent")}), log=lambda _: None)


# ------------------------------------------------------------------ train.amp=auto


@pytest.mark.parametrize("flags, limit, native", [
    ({"avx512f", "avx512_bf16"}, "", True),          # AMD EPYC (Zen 4/5), oneDNN default
    ({"avx512_bf16", "amx_bf16"}, "AVX512_CORE_BF16", True),  # Intel AMX under attreid's cap
    ({"avx512_bf16", "amx_bf16"}, "ALL", True),
    ({"avx512_bf16"}, "AVX512_CORE", False),         # the ISA limit excludes bf16
    ({"avx512_bf16"}, "AVX2", False),
    ({"avx2", "fma"}, "", False),                    # no bf16 instructions at all
    ({"amx_bf16"}, "avx10_1_512_amx", True),
])
def test_native_bf16_needs_the_flag_and_an_isa_limit_that_allows_it(flags, limit, native):
    environ = {"ONEDNN_MAX_CPU_ISA": limit} if limit else {}
    assert cpu_bf16_native(frozenset(flags), environ) is native


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512_bf16\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "absent") == frozenset()


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "none")])
def test_auto_is_bf16_only_where_the_cpu_has_it(monkeypatch, native, expected):
    from attreid.inference import extraction as inference

    monkeypatch.setattr(inference, "cpu_bf16_native", lambda: native)
    assert resolve_amp("auto", torch.device("cpu")) == expected
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16"  # explicit modes stay
    assert resolve_amp("none", torch.device("cpu")) == "none"
    with pytest.raises(ValueError, match="expected one of auto, none, bf16, fp16"):
        resolve_amp("bfloat16", torch.device("cpu"))


def test_auto_run_records_what_ran_and_bf16_without_native_support_warns(
        synth_root, tmp_path, monkeypatch):
    from attreid.inference import extraction as inference
    from attreid.training import precision

    monkeypatch.setattr(inference, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_native", lambda: False)
    cfg = with_updates(_config(synth_root, tmp_path / "auto", "auto"), optim={"epochs": 1})
    lines = []
    train(cfg, log=lines.append)
    assert "precision: float32 (train.amp=auto on cpu)" in lines
    assert "amp: none" in (tmp_path / "auto" / "config.yaml").read_text()
    record = json.loads((tmp_path / "auto" / "metrics.jsonl").read_text())
    assert "bf16_steps_in_fp32" not in record["train"]
    lines = []
    bf16 = with_updates(cfg, train={"amp": "bf16", "out": str(tmp_path / "bf16")})
    train(bf16, log=lines.append)
    assert lines[0] == "precision: bf16 autocast"
    assert lines[1].startswith("warning: train.amp=bf16 on a CPU without native bf16")


def test_an_error_naming_a_non_utf8_file_prints_on_any_terminal(monkeypatch, capsys, tmp_path):
    """A file name byte that is not UTF-8 (0xE9) is shown as \\xe9, not a UnicodeEncodeError."""
    import attreid.cli.demo as demo
    from attreid.data.records import DataError

    name = os.fsdecode(b"caf\xe9_c1.jpg")

    def fail(*_args, **_kwargs):
        raise DataError(f"{name}: cannot decode image")

    monkeypatch.setattr(demo, "run_demo", fail)
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["demo", "--out", str(tmp_path)])
    assert exit_info.value.code == 1
    assert "error: caf\\xe9_c1.jpg: cannot decode image" in capsys.readouterr().out


def test_demo_with_zero_epochs_is_refused_not_run_in_full(tmp_path, capsys):
    """`attreid demo --epochs 0` used to fall back to the preset's 10 epochs."""
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["demo", "--out", str(tmp_path), "--ids", "8", "--epochs", "0"])
    assert exit_info.value.code == 1
    assert "optim.epochs=0: at least 1 epoch" in capsys.readouterr().out


def test_demo_refuses_bad_ids_without_touching_the_previous_data(tmp_path, capsys):
    """A bad --ids is one error line (it was a traceback), and the previous demo's data stays
    (it was deleted before the check)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep").write_text("previous demo")
    with pytest.raises(SystemExit) as exit_info:
        cli.run(["demo", "--out", str(tmp_path), "--ids", "1"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 1 and "error: ids must be" in out and "Traceback" not in out
    assert (tmp_path / "data" / "keep").read_text() == "previous demo"


def test_debug_shows_the_traceback_of_errors_commands_catch(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTREID_DEBUG", "1")
    from attreid.utils.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="checkpoint not found"):
        cli.run(["evaluate", str(tmp_path / "missing.pt"), "--data", str(tmp_path)])
