"""The Predictor inference API on a tiny trained checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import attreid
from attreid.data.load import load_dataset
from attreid.data.records import DataError
from attreid.schema import TASK_NAMES
from attreid.utils.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return attreid.Predictor(tiny_checkpoint, device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def paths(synth_market):
    return [r.path for r in load_dataset(synth_market).query[:7]]


def test_predict_paths_pil_and_tensors_agree(predictor, paths):
    from PIL import Image

    by_path = predictor.predict(paths)
    assert by_path.embeddings.shape == (7, predictor.embedding_dim)
    assert by_path.labels.shape == (7, 12) and len(by_path) == 7
    pil = predictor.predict([Image.open(p) for p in paths])
    np.testing.assert_allclose(pil.embeddings, by_path.embeddings, atol=1e-6)
    pre = predictor.predict(predictor.preprocess(paths))
    np.testing.assert_allclose(pre.embeddings, by_path.embeddings, atol=1e-6)
    raw = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB")))
                       .permute(2, 0, 1) for p in paths])
    assert predictor.predict(raw).embeddings.shape == (7, predictor.embedding_dim)


def test_probabilities_and_labels_are_consistent(predictor, paths):
    result = predictor.predict(paths)
    for t, name in enumerate(TASK_NAMES):
        probs = result.probabilities[name]
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
        assert (probs.argmax(axis=1) == result.labels[:, t]).all()
    assert set(result.attributes(0)) == set(TASK_NAMES)


def test_flip_averages_with_the_mirror(tiny_checkpoint, paths):
    plain = attreid.Predictor(tiny_checkpoint, device="cpu")
    flip = attreid.Predictor(tiny_checkpoint, device="cpu", flip=True)
    x = plain.preprocess(paths)
    expected = (plain.predict(x).embeddings + plain.predict(torch.flip(x, dims=[3])).embeddings)
    np.testing.assert_allclose(flip.predict(x).embeddings, expected / 2, atol=1e-5)


def test_predictor_errors(tmp_path, predictor):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        attreid.Predictor(tmp_path / "missing.pt")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.jpg: cannot decode image"):
        predictor.predict([bad])
    with pytest.raises(ValueError, match=r"expected an image batch \(N, 3, H, W\)"):
        predictor.predict(torch.zeros(2, 1, 64, 32))
    with pytest.raises(ValueError, match="at least one image"):
        predictor.predict([])
