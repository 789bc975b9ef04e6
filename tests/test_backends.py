"""The inference backend chosen per machine (attreid.inference.backends): verified candidates
only, the fastest of them, the ONNX export cached by the checkpoint's sha256 and the choice
remembered per machine; decoding overlapped with the model (attreid.inference.files) changes
no number."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
import torch
from conftest import require
from helpers import run_cli_ok

require("onnxruntime", "the onnx backend needs onnx + onnxruntime (pip install 'attreid[onnx]')")

from typer.testing import CliRunner  # noqa: E402

from attreid.cli import app  # noqa: E402
from attreid.data.records import DataError  # noqa: E402
from attreid.evaluation.evaluate import evaluate_checkpoint  # noqa: E402
from attreid.inference import backends  # noqa: E402
from attreid.inference.backends import (  # noqa: E402
    BF16_TOLERANCE,
    ONNX_TOLERANCE,
    cache_dir,
    load_predictor,
)
from attreid.inference.files import extract_files  # noqa: E402
from attreid.inference.onnx import ExportError, OnnxPredictor  # noqa: E402
from attreid.inference.predictor import Predictor  # noqa: E402
from attreid.utils.files import file_sha256  # noqa: E402
from attreid.utils.threads import prefetch  # noqa: E402

runner = CliRunner()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """An empty cache for this test."""
    monkeypatch.setenv("ATTREID_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _files(root, n=40):
    return sorted((root / "bounding_box_test").glob("*.jpg"))[:n]


def _reference(checkpoint, files, flip=False):
    p = Predictor(checkpoint, "cpu", flip=flip)
    return extract_files(p, files, 16, ahead=0)


# ------------------------------------------------------------------ the choice


def test_auto_picks_the_fastest_verified_and_remembers_it(tiny_checkpoint, synth_market, cache,
                                                          monkeypatch):
    monkeypatch.setattr(backends, "cpu_bf16_native", lambda: True)
    fake = {"torch-fp32": 100.0, "onnx": 250.0, "torch-bf16": 300.0}
    monkeypatch.setattr(backends, "_rates", lambda runners, probe: {k: fake[k] for k in runners})
    predictor, choice = load_predictor(tiny_checkpoint, "auto", "cpu", batch_size=16)
    assert choice.backend == "torch-bf16" and isinstance(predictor, Predictor)
    assert predictor.amp == "bf16" and choice.rates == fake
    assert "measured torch-bf16 300 img/s, onnx 250 img/s, torch-fp32 100 img/s" in \
        choice.describe()
    # the next command on this machine measures nothing
    monkeypatch.setattr(backends, "_candidates", lambda *a: pytest.fail("measured again"))
    again, second = load_predictor(tiny_checkpoint, "auto", "cpu", batch_size=16)
    assert second.backend == "torch-bf16" and again.amp == "bf16"
    assert "measured earlier on this machine" in second.reason
    # another batch size is another measurement
    with pytest.raises(pytest.fail.Exception, match="measured again"):
        load_predictor(tiny_checkpoint, "auto", "cpu", batch_size=8)


def test_auto_really_measured_gives_what_torch_fp32_gives(tiny_checkpoint, synth_market, cache):
    files = _files(synth_market)
    predictor, choice = load_predictor(tiny_checkpoint, "auto", "cpu", batch_size=16, flip=True)
    assert set(choice.rates) >= {"torch-fp32", "onnx"} and all(r > 0 for r in
                                                               choice.rates.values())
    assert choice.backend == max(choice.rates, key=choice.rates.get)
    got, want = extract_files(predictor, files), _reference(tiny_checkpoint, files, flip=True)
    if choice.backend == "torch-bf16":
        error = (got.embeddings - want.embeddings).norm(dim=1) / want.embeddings.norm(dim=1)
        assert float(error.max()) <= BF16_TOLERANCE
    else:
        assert float((got.embeddings - want.embeddings).abs().max()) <= ONNX_TOLERANCE


def test_onnx_export_is_cached_by_sha256_and_redone_for_other_versions(tiny_checkpoint, cache,
                                                                       monkeypatch):
    predictor, choice = load_predictor(tiny_checkpoint, "onnx", "cpu")
    sha = file_sha256(tiny_checkpoint)
    path = cache / "onnx" / f"{sha}.onnx"
    assert isinstance(predictor, OnnxPredictor) and path.is_file()
    assert predictor.checkpoint_sha256 == sha and predictor.checkpoint == tiny_checkpoint
    record = json.loads((cache / "onnx" / f"{sha}.json").read_text())
    assert record["export"]["problem"] is None
    assert record["export"]["versions"]["torch"] == torch.__version__
    calls = []
    real_export = backends.export_onnx
    monkeypatch.setattr(backends, "export_onnx", lambda *a: calls.append(a) or real_export(*a))
    load_predictor(tiny_checkpoint, "onnx", "cpu")
    assert calls == []  # reused
    record["export"]["versions"]["torch"] = "0.0"
    (cache / "onnx" / f"{sha}.json").write_text(json.dumps(record))
    load_predictor(tiny_checkpoint, "onnx", "cpu")
    assert len(calls) == 1  # made by another torch: exported again


def test_an_export_that_does_not_match_is_never_used(tiny_checkpoint, cache, monkeypatch):
    monkeypatch.setattr(backends, "check_onnx", lambda ref, got: "embeddings differ by 1")
    with pytest.raises(ExportError, match="does not match torch float32: embeddings differ"):
        load_predictor(tiny_checkpoint, "onnx", "cpu")
    predictor, choice = load_predictor(tiny_checkpoint, "auto", "cpu")
    assert choice.backend != "onnx" and "onnx" not in choice.rates
    assert "onnx: embeddings differ by 1" in choice.describe()


def test_bf16_that_is_not_finite_is_not_a_candidate(tiny_checkpoint, cache, monkeypatch):
    monkeypatch.setattr(backends, "cpu_bf16_native", lambda: True)
    real = backends._torch

    def poisoned(reference, amp):
        other = real(reference, amp)
        conv = next(m for m in other.model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, i, o: o * float("nan")
                                   if torch.is_autocast_enabled("cpu") else o)
        return other

    monkeypatch.setattr(backends, "_torch", poisoned)
    _, choice = load_predictor(tiny_checkpoint, "auto", "cpu")
    assert "torch-bf16" not in choice.rates and choice.checks["torch-bf16"] == "not finite"


def test_without_native_bf16_or_onnxruntime_the_rest_compete(tiny_checkpoint, cache,
                                                             monkeypatch):
    monkeypatch.setattr(backends, "cpu_bf16_native", lambda: False)
    monkeypatch.setattr(backends, "_onnx_installed", lambda: False)
    predictor, choice = load_predictor(tiny_checkpoint, "auto", "cpu")
    assert choice.backend == "torch-fp32" and predictor.amp == "none"
    assert "not installed" in choice.checks["onnx"]
    assert "no native bf16" in choice.checks["torch-bf16"]


def test_a_cache_that_cannot_be_written_costs_only_the_onnx_candidate(
        tiny_checkpoint, synth_market, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ATTREID_CACHE_DIR", str(blocker / "cache"))
    assert cache_dir() == blocker / "cache"
    predictor, choice = load_predictor(tiny_checkpoint, "auto", "cpu")
    assert "onnx" not in choice.rates and "onnx" in choice.checks
    assert len(predictor.predict(_files(synth_market, 3))) == 3


def test_hyper_threads_make_onnx_with_one_thread_per_cpu_a_candidate(tiny_checkpoint, cache,
                                                                    monkeypatch, tmp_path):
    info = tmp_path / "cpuinfo"  # 2 CPUs, hyper-threads of core 0
    info.write_text("processor\t: 0\nphysical id\t: 0\ncore id\t: 0\n\n"
                    "processor\t: 1\nphysical id\t: 0\ncore id\t: 0\n")
    from attreid.utils import backend as machine

    assert machine.physical_cores(info) == 1
    monkeypatch.setattr(backends, "physical_cores", lambda: 1)
    monkeypatch.setattr(backends, "logical_cpus", lambda: 2)
    fake = {"torch-fp32": 1.0, "torch-bf16": 2.0, "onnx": 3.0, "onnx (2 threads)": 4.0}
    monkeypatch.setattr(backends, "_rates", lambda runners, probe: {k: fake[k] for k in runners})
    predictor, choice = load_predictor(tiny_checkpoint, "auto", "cpu")
    assert choice.backend == "onnx (2 threads)" and predictor.threads == 2
    again, _ = load_predictor(tiny_checkpoint, "auto", "cpu")  # remembered, threads included
    assert isinstance(again, OnnxPredictor) and again.threads == 2


@pytest.mark.parametrize("backend, amp", [("torch-fp32", "none"), ("torch", "none"),
                                          ("torch-bf16", "bf16")])
def test_forced_torch_backends(tiny_checkpoint, cache, backend, amp):
    predictor, choice = load_predictor(tiny_checkpoint, backend, "cpu")
    assert isinstance(predictor, Predictor) and predictor.amp == amp
    assert choice.reason == "as asked" and not (cache / "onnx").exists()


def test_bad_backends_are_refused(tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="backend 'fast': expected one of auto, onnx"):
        load_predictor(tiny_checkpoint, "fast", "cpu")
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"")
    with pytest.raises(ValueError, match="runs with backend onnx"):
        load_predictor(onnx_file, "torch-bf16")


# ------------------------------------------------------------------ consumers


def test_evaluate_auto_equals_torch_fp32_and_records_the_backend(tiny_checkpoint, synth_market,
                                                                  cache):
    seen = []
    auto = evaluate_checkpoint(tiny_checkpoint, synth_market, device="cpu", flip=True,
                               on_backend=seen.append).metrics
    fp32 = evaluate_checkpoint(tiny_checkpoint, synth_market, device="cpu", flip=True,
                               backend="torch-fp32").metrics
    assert auto["setup"]["backend"] == seen[0].backend and fp32["setup"]["backend"] == \
        "torch-fp32"
    for key in ("mAP", "rank1", "mINP", "mean_accuracy"):  # the 0.05 points
        assert abs(auto[key] - fp32[key]) <= 5e-4, key


def test_cli_prints_the_backend_on_stderr_and_refuses_a_bad_one(tiny_checkpoint, synth_market,
                                                                 tmp_path, cache, capsys):
    run_cli_ok(["evaluate", str(tiny_checkpoint), "--data", str(synth_market), "--device",
                "cpu", "--out", str(tmp_path / "e"), "--backend", "torch-fp32"])
    captured = capsys.readouterr()
    assert "backend: torch-fp32 (as asked)" in captured.err
    assert "backend:" not in captured.out
    bad = runner.invoke(app, ["evaluate", str(tiny_checkpoint), "--data", str(synth_market),
                              "--backend", "gpu-magic", "--out", str(tmp_path / "f")])
    assert bad.exit_code == 1 and "backend 'gpu-magic'" in bad.output
    assert bad.exception is None or isinstance(bad.exception, SystemExit)


# ------------------------------------------------------------------ overlapped decoding


def test_overlapped_decoding_changes_no_number(tiny_checkpoint, synth_market):
    predictor = Predictor(tiny_checkpoint, "cpu")
    files = _files(synth_market, 50)
    inline = extract_files(predictor, files, 16, ahead=0)
    done = []
    ahead = extract_files(predictor, files, 16, progress=done.append, ahead=2)
    assert torch.equal(inline.embeddings, ahead.embeddings)
    assert all(torch.equal(inline.logits[k], ahead.logits[k]) for k in inline.logits)
    assert done == [16, 32, 48, 50]


def test_a_bad_file_met_by_the_decoder_thread_is_named(tiny_checkpoint, synth_market, tmp_path):
    files = _files(synth_market, 30)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        extract_files(Predictor(tiny_checkpoint, "cpu"), files[:20] + [broken] + files[20:], 8)


def test_prefetch_keeps_order_raises_in_place_and_stops_early():
    assert list(prefetch(range(100), ahead=3)) == list(range(100))
    assert list(prefetch(range(5), ahead=0)) == list(range(5))

    def failing():
        yield 1
        yield 2
        raise KeyError("third")

    got = []
    with pytest.raises(KeyError, match="third"):
        for item in prefetch(failing(), ahead=2):
            got.append(item)
    assert got == [1, 2]
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    before = threading.active_count()
    for item in prefetch(endless(), ahead=2):
        if item == 3:
            break
    assert threading.active_count() == before  # the producer thread has ended
    assert len(produced) <= 3 + 1 + 2 + 1  # consumed, in hand, queued, being produced


def test_evaluate_names_the_backend_in_metrics_json(tiny_checkpoint, synth_market, tmp_path,
                                                    cache):
    out = tmp_path / "eval"
    evaluate_checkpoint(tiny_checkpoint, synth_market, device="cpu", out=out,
                        backend="onnx")
    assert json.loads((out / "metrics.json").read_text())["setup"]["backend"] == "onnx"
    assert np.isfinite(json.loads((out / "metrics.json").read_text())["mAP"])
    assert os.listdir(cache / "onnx")


# ------------------------------------------------------------------ a damaged cache


@pytest.mark.parametrize("damage", ["truncated", "replaced"])
def test_a_damaged_cached_export_is_made_again(tiny_checkpoint, synth_market, cache, damage):
    predictor, _ = load_predictor(tiny_checkpoint, "onnx", "cpu")
    path = cache / "onnx" / f"{file_sha256(tiny_checkpoint)}.onnx"
    good = path.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o666 & ~_umask_now()  # not mkstemp's 0600
    if damage == "truncated":
        path.write_bytes(good[:1000])
    else:  # a loadable export of another model in its place: not the file that was verified
        other = good.replace(b"attreid", b"ATTREID", 1)
        path.write_bytes(other)
    for backend in ("auto", "onnx"):
        predictor, _ = load_predictor(tiny_checkpoint, backend, "cpu")
        assert path.read_bytes() == good or file_sha256(path) == json.loads(
            (cache / "onnx" / f"{file_sha256(tiny_checkpoint)}.json").read_text()
        )["export"]["sha256"]
        assert len(predictor.predict(_files(synth_market, 2))) == 2


@pytest.mark.parametrize("record", ["[1, 2]", '{"choices": [1]}', '{"export": 3}', "{"])
def test_a_record_of_another_shape_costs_a_measurement_not_a_traceback(tiny_checkpoint, cache,
                                                                         record):
    load_predictor(tiny_checkpoint, "auto", "cpu")
    (cache / "onnx" / f"{file_sha256(tiny_checkpoint)}.json").write_text(record)
    predictor, choice = load_predictor(tiny_checkpoint, "auto", "cpu")
    assert "the fastest verified" in choice.reason  # measured again


def test_bf16_that_changes_a_label_is_not_verified():
    from attreid.inference.backends import check_bf16
    from attreid.inference.extraction import Features

    emb = torch.ones(2, 4)
    ref = Features(emb, {"gender": torch.tensor([[0.5], [-0.5]])})
    same = Features(emb * 1.001, {"gender": torch.tensor([[0.4], [-0.6]])})
    flipped = Features(emb * 1.001, {"gender": torch.tensor([[-0.1], [-0.6]])})
    assert check_bf16(ref, same) is None
    assert check_bf16(ref, flipped) == "1 attribute label(s) differ from torch float32's"
    far = Features(emb * 1.1, {"gender": torch.tensor([[0.5], [-0.5]])})
    assert check_bf16(ref, far).startswith("relative error 0.100")


def test_the_probe_is_the_commands_own_crops_where_given(tiny_checkpoint, synth_market,
                                                        tmp_path):
    from attreid.inference.backends import probe_batch

    predictor = Predictor(tiny_checkpoint, "cpu")
    files = _files(synth_market, 40)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"no")
    probe = probe_batch(predictor, 8, files)
    assert torch.equal(probe, predictor.preprocess(files[::5][:8]))  # spread over the list
    mixed = probe_batch(predictor, 4, [broken, files[0]])
    assert torch.equal(mixed[0], predictor.preprocess([files[0]])[0])  # the bad one skipped
    assert torch.equal(mixed[1:], probe_batch(predictor, 4)[1:])  # synthetic fill


def _umask_now() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
