"""ONNX export: parity with PyTorch (outputs, attributes, rankings), metadata, CLI backends."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import require
from helpers import assert_nearest_within

require("onnxruntime", "ONNX export needs onnx + onnxruntime (pip install 'attreid[onnx]')")

from typer.testing import CliRunner  # noqa: E402

from attreid.cli import app  # noqa: E402
from attreid.inference.onnx import ExportError, OnnxPredictor, export_onnx
from attreid.inference.predictor import Predictor
from attreid.models import build_model  # noqa: E402
from attreid.utils.checkpoint import load_checkpoint, save_checkpoint

TOLERANCE = 1e-4  # max abs difference allowed between ONNX Runtime and PyTorch, fp32
runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory) -> Path:
    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("onnx") / "model.onnx")


def _images(folder: Path, n: int) -> list[Path]:
    return sorted(folder.glob("*.jpg"))[:n]


def _assert_same(a, b) -> None:
    assert np.abs(a.embeddings - b.embeddings).max() <= TOLERANCE
    for task, probs in a.probabilities.items():
        assert np.abs(probs - b.probabilities[task]).max() <= TOLERANCE, task
    assert (a.labels == b.labels).all()


@pytest.mark.parametrize("flip", [False, True])
def test_onnx_matches_pytorch_and_ranks_the_same(exported, tiny_checkpoint, synth_market, flip):
    queries, gallery = _images(synth_market / "query", 12), _images(
        synth_market / "bounding_box_test", 80)
    onnx, torch_ = OnnxPredictor(exported, flip=flip), Predictor(tiny_checkpoint, "cpu",
                                                                   flip=flip)
    for files in (queries, gallery):
        _assert_same(onnx.predict(files), torch_.predict(files))
    dist = {}
    for name, predictor in (("onnx", onnx), ("torch", torch_)):
        q, g = predictor.predict(queries).embeddings, predictor.predict(gallery).embeddings
        dist[name] = torch.cdist(torch.from_numpy(q).double(), torch.from_numpy(g).double())
    # ONNX Runtime's top-10 is torch's up to near-ties: embeddings agree within 1e-4 per
    # component, so distances within 2 * 1e-4 * sqrt(D) (D = 128: 2.3e-3); entries closer than
    # that may swap on some CPU, a wrong neighbour or order beyond it fails
    tol = 2 * 1e-4 * q.shape[1] ** 0.5
    for onnx_row, torch_row in zip(dist["onnx"], dist["torch"]):
        top = torch.argsort(onnx_row, stable=True)[:10]
        assert_nearest_within(top.tolist(), torch_row.numpy(), tol=tol)


@pytest.mark.parametrize("variant,pooling", [("resnet", "avg"), ("convhead", "avg"),
                                             ("attention", "avg"), ("resnet", "gem")])
def test_every_variant_exports_with_a_dynamic_batch(tiny_checkpoint, tmp_path, variant, pooling):
    state = load_checkpoint(tiny_checkpoint)
    config = dict(state["model_config"], name=variant, pooling=pooling)
    torch.manual_seed(0)
    state["model"], state["model_config"] = build_model(**config).state_dict(), config
    checkpoint = tmp_path / f"{variant}.pt"
    save_checkpoint(checkpoint, state)
    onnx = OnnxPredictor(export_onnx(checkpoint, tmp_path / f"{variant}.onnx"))
    reference = Predictor(checkpoint, "cpu")
    for n in (1, 5):
        pixels = (torch.rand(n, 3, 96, 48) * 255).to(torch.uint8).numpy().transpose(0, 2, 3, 1)
        from PIL import Image

        images = [Image.fromarray(p) for p in pixels]
        _assert_same(onnx.predict(images), reference.predict(images))


def test_metadata_describes_the_model(exported, tiny_checkpoint):
    onnx = OnnxPredictor(exported)
    torch_ = Predictor(tiny_checkpoint, "cpu")
    meta = onnx.session.get_modelmeta().custom_metadata_map
    pre = json.loads(meta["attreid.preprocess"])
    assert (pre["height"], pre["width"]) == (torch_.transform_config.height,
                                             torch_.transform_config.width)
    assert pre["mean"] == list(torch_.transform_config.mean)
    assert onnx.checkpoint_sha256 == torch_.checkpoint_sha256
    assert json.loads(meta["attreid.tasks"])[0] == ["age", ["young", "teenager", "adult", "old"]]
    assert [i.name for i in onnx.session.get_inputs()] == ["images"]
    assert onnx.session.get_inputs()[0].shape[0] == "batch"
    assert len(onnx.session.get_outputs()) == 13


def test_bad_files_give_clear_errors(tmp_path, tiny_checkpoint):
    (tmp_path / "x.onnx").write_bytes(b"not a model")
    with pytest.raises(ExportError, match="cannot load ONNX model"):
        OnnxPredictor(tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="not found"):
        OnnxPredictor(tmp_path / "missing.onnx")
    result = runner.invoke(app, ["export", str(tmp_path / "none.pt"), "--out",
                                 str(tmp_path / "m.onnx")])
    assert result.exit_code == 1 and "checkpoint not found" in result.output
    assert not (tmp_path / "m.onnx").exists()


def test_cli_export_predict_and_index_with_the_onnx_backend(exported, tiny_checkpoint,
                                                            synth_market, tmp_path):
    result = runner.invoke(app, ["export", str(tiny_checkpoint), "--out",
                                 str(tmp_path / "m.onnx")])
    assert result.exit_code == 0 and "wrote" in result.output
    features = {}
    for backend, model in (("torch", tiny_checkpoint), ("onnx", exported)):
        out = tmp_path / backend
        result = runner.invoke(app, ["predict", str(model), "--data", str(synth_market),
                                     "--out", str(out), "--backend", backend, "--device", "cpu"])
        assert result.exit_code == 0, result.output
        features[backend] = np.load(out / "features.npz")
    assert np.abs(features["onnx"]["embeddings"] - features["torch"]["embeddings"]).max() \
        <= TOLERANCE
    assert (features["onnx"]["labels"] == features["torch"]["labels"]).all()
    index = tmp_path / "index"
    result = runner.invoke(app, ["index", "build", str(exported), "--backend", "onnx",
                                 "--images", str(synth_market / "query"), "--out", str(index)])
    assert result.exit_code == 0, result.output
    from attreid.search import GallerySearch

    query = _images(synth_market / "query", 1)[0]
    by_onnx = GallerySearch.open(index).by_image(query, k=5)  # the recorded .onnx
    by_torch = GallerySearch.open(index, checkpoint=tiny_checkpoint).by_image(query, k=5)
    assert [h.entry.id for h in by_onnx] == [h.entry.id for h in by_torch]
    assert by_onnx[0].entry.path.endswith(query.name)
