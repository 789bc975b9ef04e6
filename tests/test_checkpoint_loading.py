"""Checkpoints saved through wrappers (DataParallel/DDP ``module.``, torch.compile
``_orig_mod.``) load everywhere; a checkpoint of another model is a CheckpointError naming the
file and the keys (issue 15, fault 3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import require

from attreid import cli
from attreid.inference.predictor import Predictor
from attreid.models import build_model
from attreid.utils.checkpoint import (
    CheckpointError,
    describe_key_mismatch,
    load_checkpoint,
    load_model_weights,
    save_checkpoint,
    strip_wrapper_prefixes,
)


def test_wrapper_prefixes_are_removed_wherever_they_stand():
    state = {"module.backbone.w": 1, "module._orig_mod.head.b": 2, "_orig_mod.x": 3,
             "backbone._orig_mod.layer1.w": 4, "modules.keep": 5, "a.module_b.c": 6}
    assert strip_wrapper_prefixes(state) == {"backbone.w": 1, "head.b": 2, "x": 3,
                                             "backbone.layer1.w": 4, "modules.keep": 5,
                                             "a.module_b.c": 6}


def test_key_mismatch_names_only_what_is_there():
    assert describe_key_mismatch([], ["fc.w"]) == "1 unexpected (fc.w)"
    assert describe_key_mismatch(["b", "a"], []) == "2 missing (a, b)"
    text = describe_key_mismatch([f"k{i}" for i in range(7)], ["u"], shown=2)
    assert text == "7 missing (k0, k1, ...), 1 unexpected (u)"
    assert "[]" not in describe_key_mismatch(["x"], [])


def _rewrite(source: Path, target: Path, edit) -> Path:
    state = load_checkpoint(source)
    state["model"] = edit(state["model"])
    save_checkpoint(target, state)
    return target


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_prefixed_checkpoint_predicts_like_the_original(tiny_checkpoint, synth_market,
                                                       tmp_path, prefix):
    wrapped = _rewrite(tiny_checkpoint, tmp_path / "wrapped.pt",
                       lambda m: {prefix + k: v for k, v in m.items()})
    images = sorted((synth_market / "query").glob("*.jpg"))[:4]
    want = Predictor(tiny_checkpoint, device="cpu").predict(images)
    got = Predictor(wrapped, device="cpu").predict(images)
    assert (got.embeddings == want.embeddings).all()  # the same weights, the same numbers
    assert (got.labels == want.labels).all()


def test_evaluate_and_export_of_a_ddp_checkpoint(tiny_checkpoint, synth_market, tmp_path):
    """What the bug report ran: `attreid evaluate` and `attreid export` on a `module.` file."""
    wrapped = _rewrite(tiny_checkpoint, tmp_path / "ddp.pt",
                       lambda m: {"module." + k: v for k, v in m.items()})
    for ckpt, out in ((tiny_checkpoint, tmp_path / "plain"), (wrapped, tmp_path / "ddp")):
        _run_ok(["evaluate", str(ckpt), "--data", str(synth_market), "--out", str(out)])
    plain = json.loads((tmp_path / "plain" / "metrics.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["mAP"] == plain["mAP"] and ddp["accuracy"] == plain["accuracy"]
    require("onnx", "ONNX export needs onnx (pip install 'attreid[onnx]')")
    _run_ok(["export", str(wrapped), "--out", str(tmp_path / "m.onnx")])
    assert (tmp_path / "m.onnx").stat().st_size > 0


def _run_ok(args: list[str]) -> None:
    try:
        cli.run(args)
    except SystemExit as exc:
        assert exc.code in (0, None), args


def test_a_checkpoint_of_another_model_is_a_named_error(tiny_checkpoint, tmp_path):
    state = load_checkpoint(tiny_checkpoint)
    other = build_model(**{**state["model_config"], "embedding_dim": 64})
    with pytest.raises(CheckpointError, match=r"^x\.pt: \d+ tensor\(s\) of another shape "
                                              r"than this model's .*\(128, 512\) vs \(64, 512\)"):
        load_model_weights(other, state["model"], "x.pt")
    dropped = dict(state["model"])
    removed = sorted(k for k in dropped if k.startswith("backbone."))[:3]
    for key in removed:
        del dropped[key]
    dropped["extra.weight"] = torch.zeros(1)
    model = build_model(**state["model_config"])
    with pytest.raises(CheckpointError) as info:
        load_model_weights(model, dropped, "y.pt")
    message = str(info.value)
    assert message.startswith("y.pt: the weights do not fit this model: 3 missing (")
    assert all(k in message for k in removed) and "1 unexpected (extra.weight)" in message


@pytest.mark.parametrize("command", ["evaluate", "export", "predict"])
def test_foreign_checkpoint_in_the_cli_is_one_error_line(tiny_checkpoint, synth_market,
                                                         tmp_path, command):
    foreign = _rewrite(tiny_checkpoint, tmp_path / "foreign.pt",
                       lambda m: {("renamed." + k if "attribute" in k else k): v
                                  for k, v in m.items()})
    args = {"evaluate": ["--data", str(synth_market), "--out", str(tmp_path / "e")],
            "export": ["--out", str(tmp_path / "m.onnx")],
            "predict": ["--data", str(synth_market), "--out", str(tmp_path / "p")]}[command]
    result = subprocess.run([str(Path(sys.executable).parent / "attreid"), command,
                             str(foreign), *args], capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "error:" in output and "foreign.pt" in output and "missing" in output
    assert "Traceback" not in output
