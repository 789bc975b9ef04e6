"""Training behaviours checked against values computed by hand (issue 21, item 10 part C):
uncertainty weighting (value, derivative, one engine step), gradient clipping, AdamW's
decoupled weight decay, the GradScaler state through a checkpoint and resume, and validation
on a dataset without attribute labels.

Each test names the mutation of ``src/`` it was seen to fail on.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from helpers import make_custom_copy
from torch import nn

from attreid.config import load_config, with_updates
from attreid.data.evalset import labels_and_cameras
from attreid.data.io import read_image
from attreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from attreid.metrics import reid_metrics
from attreid.models.output import ModelOutput
from attreid.schema import TASKS
from attreid.training import engine
from attreid.training import step as training_step
from attreid.training.losses import UncertaintyWeighting
from attreid.utils.checkpoint import load_checkpoint

SIZE = 32  # images 32x32 (the smallest the models take), a 16-d embedding: steps of ~0.2 s


def _config(root, out, **sections):
    cfg = load_config("demo", [
        f"data.root={root}", "data.p=4", "data.k=2", "data.workers=0", "data.cache=false",
        f"data.height={SIZE}", f"data.width={SIZE}", "model.embedding_dim=16",
        "model.hidden_dim=32", f"train.out={out}", "train.amp=none", "train.device=cpu",
        "train.channels_last=false", "train.tensorboard=false", "optim.warmup_epochs=0",
    ])
    return with_updates(cfg, **sections)


@pytest.fixture(scope="module")
def data(synth_market, tmp_path_factory):
    """(config, bundle, one P x K training batch) on the session's synthetic Market-1501."""
    cfg = _config(synth_market, tmp_path_factory.mktemp("values_training"))
    bundle = engine.build_data(cfg)
    torch.manual_seed(0)  # the augmentation of the batch
    batch = next(iter(engine.make_loader(cfg, bundle.train, 0)))
    return cfg, bundle, batch


def _params(parts) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parts.model.parameters()]


def _flat64(tensors) -> np.ndarray:
    return np.concatenate([t.detach().double().reshape(-1).numpy() for t in tensors])


def _raw_gradients(cfg, bundle, batch) -> list[torch.Tensor]:
    """The loss gradients of a freshly set-up model on ``batch``, computed outside the engine
    (setup seeds the weights: this model is the engine's, parameter for parameter)."""
    parts = engine.setup(cfg, bundle)
    parts.model.train()
    out = parts.model(batch["image"])
    parts.criterion(out, batch["label"], batch["attributes"])["loss"].backward()
    return [p.grad.detach().clone() for p in parts.model.parameters()]


# --------------------------------------------------------------------------------------------
# Uncertainty weighting
# --------------------------------------------------------------------------------------------


def test_uncertainty_weighting_is_kendalls_objective_and_its_derivative():
    """Kendall, Gal & Cipolla, "Multi-task learning using uncertainty to weigh losses for scene
    geometry and semantics", CVPR 2018: with s = log sigma, a regression-like term weighs
    1 / (2 sigma^2) and a classification term 1 / sigma^2, each plus log sigma:

        L = L_reid / (2 e^{2 s0}) + s0 + L_attr / e^{2 s1} + s1
        dL/ds0 = 1 - L_reid e^{-2 s0},   dL/ds1 = 1 - 2 L_attr e^{-2 s1}

    Mutations caught: dropping the regulariser ``+ self.s0`` (value 0.3 lower, dL/ds0 off by 1);
    ``exp(s0)`` for ``exp(2 * s0)``."""
    s0, s1, l_reid, l_attr = 0.3, -0.2, 2.5, 0.7
    weighting = UncertaintyWeighting()
    with torch.no_grad():
        weighting.s0.fill_(s0)
        weighting.s1.fill_(s1)
    reid = torch.tensor(l_reid, requires_grad=True)
    attr = torch.tensor(l_attr, requires_grad=True)
    out = weighting(reid, attr)
    out["total"].backward()
    # float32 arithmetic on values ~1: a few ulps (1.2e-7 each) from the float64 hand values
    close = {"rel": 1e-6, "abs": 1e-6}
    expected = l_reid / (2 * math.exp(2 * s0)) + s0 + l_attr / math.exp(2 * s1) + s1
    assert float(out["total"].detach()) == pytest.approx(expected, **close)  # 1.83029
    assert float(weighting.s0.grad) == pytest.approx(1 - l_reid * math.exp(-2 * s0), **close)
    assert float(weighting.s1.grad) == pytest.approx(1 - 2 * l_attr * math.exp(-2 * s1), **close)
    assert float(reid.grad) == pytest.approx(1 / (2 * math.exp(2 * s0)), **close)
    assert float(attr.grad) == pytest.approx(math.exp(-2 * s1), **close)
    assert float(out["reid_weight"]) == pytest.approx(1 / (2 * math.exp(2 * s0)), **close)
    assert float(out["attr_weight"]) == pytest.approx(math.exp(-2 * s1), **close)


def test_one_engine_step_moves_the_log_variances_by_adams_first_step(data, tmp_path):
    """loss.weighting=uncertainty in the engine: the step's loss is Kendall's objective of its
    own re-ID and attribute terms, s0/s1 get the hand derivative, and Adam's first step moves
    each by lr * g / (|g| + 1e-8) (no weight decay on them: their own parameter group).

    Mutations caught: dropping ``+ self.s0`` (the loss); ``exp(s0)`` for ``exp(2 * s0)``.
    (The loss weights put in the weight-decayed group: caught by the AdamW test's groups.)"""
    cfg, bundle, batch = data
    cfg = with_updates(cfg, loss={"weighting": "uncertainty"},
                       optim={"name": "adam", "lr": 0.01, "weight_decay": 0.5})
    parts = engine.setup(cfg, bundle)
    s = {"s0": 0.4, "s1": -0.3}
    with torch.no_grad():
        for name, value in s.items():
            getattr(parts.criterion.weighting, name).fill_(value)
    terms, _ = training_step.train_step(cfg, parts, batch, 0, 0, tmp_path)
    reid, attr = float(terms["reid"].detach()), float(terms["attr"].detach())
    expected = reid / (2 * math.exp(2 * s["s0"])) + s["s0"] + attr / math.exp(2 * s["s1"]) \
        + s["s1"]
    assert float(terms["loss"].detach()) == pytest.approx(expected, rel=1e-6)
    grads = {"s0": 1 - reid * math.exp(-2 * s["s0"]), "s1": 1 - 2 * attr * math.exp(-2 * s["s1"])}
    for name, g in grads.items():
        param = getattr(parts.criterion.weighting, name)
        assert abs(g) > 0.05, (name, g)  # a clear direction to move in
        # float32 products of terms ~1: a few ulps (1.2e-7 each) from the float64 derivative
        assert float(param.grad) == pytest.approx(g, rel=1e-5, abs=1e-6), name
        # float32 s ~0.4: ulp 3e-8; the step 0.01 * sign(g) is exact to that
        step = 0.01 * g / (abs(g) + 1e-8)
        assert float(param.detach()) == pytest.approx(s[name] - step, abs=1e-7), name


# --------------------------------------------------------------------------------------------
# Gradient clipping
# --------------------------------------------------------------------------------------------


def test_grad_clip_scales_the_step_to_the_configured_norm(data, tmp_path):
    """train.grad_clip=c with a gradient of norm n = 4c: the engine's SGD step equals the step
    of an identical model whose gradients were multiplied by hand by c / (n + 1e-6)
    (clip_grad_norm_'s coefficient), and the gradient left on the model has norm c.

    Mutation caught: clipping to 2c (the step doubles: max |difference| 0.07 against a
    tolerance of 1e-6)."""
    cfg, bundle, batch = data
    cfg = with_updates(cfg, optim={"name": "sgd", "lr": 0.5, "weight_decay": 0.0})
    raw = _raw_gradients(cfg, bundle, batch)
    norm = float(np.linalg.norm(_flat64(raw)))
    clip = norm / 4
    cfg = with_updates(cfg, train={"grad_clip": clip})

    parts = engine.setup(cfg, bundle)
    training_step.train_step(cfg, parts, batch, 0, 0, tmp_path)
    used = [p.grad for p in parts.model.parameters()]
    assert np.linalg.norm(_flat64(used)) == pytest.approx(clip, rel=1e-5)

    by_hand = engine.setup(cfg, bundle)  # the same weights, the same SGD (momentum, Nesterov)
    for p, g in zip(by_hand.model.parameters(), raw):
        p.grad = g * (clip / (norm + 1e-6))
    by_hand.optimizer.step()
    # float32 weights up to ~2 (ulp 1.2e-7 there) and a float64 vs float32 clip coefficient:
    # measured max |difference| 1.2e-7 on an AMD EPYC (ONEDNN_MAX_CPU_ISA default, AVX2 and
    # AVX512_CORE, with MKL_ENABLE_INSTRUCTIONS to match); 1e-6 is 8x that
    np.testing.assert_allclose(_flat64(parts.model.parameters()),
                               _flat64(by_hand.model.parameters()), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# AdamW
# --------------------------------------------------------------------------------------------


def _adam_first_step(p: np.ndarray, g: np.ndarray, lr: float, decoupled: float = 0.0,
                     l2: float = 0.0) -> np.ndarray:
    """Adam's first step (Kingma & Ba 2015, bias-corrected: m_hat = g, v_hat = g^2) in float64;
    ``decoupled``: AdamW's p <- p (1 - lr wd) (Loshchilov & Hutter 2019); ``l2``: Adam's
    weight decay, g <- g + wd p."""
    g = g + l2 * p
    return p * (1 - lr * decoupled) - lr * g / (np.abs(g) + 1e-8)


def test_adamw_is_torch_adamw_with_decoupled_weight_decay(data, tmp_path):
    """optim.name=adamw builds torch.optim.AdamW with the configured lr and weight decay on
    the model (none on the loss weights), and one engine step equals AdamW's first step
    computed by hand from the step's own gradients; it differs from Adam + L2 decay.

    Mutations caught: ``torch.optim.Adam`` for ``adamw`` (the type, and the step is the L2
    one: max |difference| from AdamW 2e-2); the loss weights given the model's weight decay.
    """
    cfg, bundle, batch = data
    lr, wd = 0.01, 0.5
    cfg = with_updates(cfg, loss={"weighting": "uncertainty"},
                       optim={"name": "adamw", "lr": lr, "weight_decay": wd})
    parts = engine.setup(cfg, bundle)
    optimizer = parts.optimizer
    assert type(optimizer) is torch.optim.AdamW
    model_group, loss_group = optimizer.param_groups
    assert (model_group["lr"], model_group["weight_decay"]) == (lr, wd)
    assert (loss_group["lr"], loss_group["weight_decay"]) == (lr, 0.0)
    assert loss_group["params"] == [parts.criterion.weighting.s0, parts.criterion.weighting.s1]

    before = _flat64(_params(parts))
    training_step.train_step(cfg, parts, batch, 0, 0, tmp_path)
    after = _flat64(parts.model.parameters())
    grads = _flat64(p.grad for p in parts.model.parameters())
    adamw = _adam_first_step(before, grads, lr, decoupled=wd)
    adam_l2 = _adam_first_step(before, grads, lr, l2=wd)
    # float32 weights ~1 (ulp 6e-8) and sqrt / division in float32 on steps of ~1e-2:
    # measured max |difference| 6.4e-8 on an AMD EPYC (ONEDNN_MAX_CPU_ISA default, AVX2 and
    # AVX512_CORE, with MKL_ENABLE_INSTRUCTIONS to match); 1e-6 is 15x that
    np.testing.assert_allclose(after, adamw, rtol=0, atol=1e-6)
    assert np.abs(after - adam_l2).max() > 1e-3  # Adam + L2 is another step


# --------------------------------------------------------------------------------------------
# fp16's GradScaler through a checkpoint
# --------------------------------------------------------------------------------------------


def test_grad_scaler_state_survives_checkpoint_and_resume(data, tmp_path):
    """fp16 training runs on CUDA only (train.amp=fp16 is refused on the CPU before any step,
    see test_precision), so on the CPU this checks what resume adds: a GradScaler with a
    hand-set scale, factors, interval and growth tracker is written to last.pt by the engine's
    checkpoint and put back exactly into a fresh run's scaler by resume; the restored scaler
    then scales a loss by the saved scale, not the default 65536.

    Mutation caught: ``_resume`` skipping ``parts.scaler.load_state_dict``."""
    cfg, bundle, _ = data
    cfg = with_updates(cfg, train={"amp": "fp16", "out": str(tmp_path)})
    parts = engine.setup(cfg, bundle)  # setup builds the scaler; only the step needs CUDA
    state = {"scale": 1024.0, "growth_factor": 3.0, "backoff_factor": 0.25,
             "growth_interval": 7, "_growth_tracker": 5}
    parts.scaler.load_state_dict(state)
    record = {"epoch": 1, "train": {"loss": 1.0}}  # no validation: last.pt only
    engine._checkpoint(cfg, parts, bundle, 0, record, {}, tmp_path)
    assert load_checkpoint(tmp_path / "last.pt")["scaler"] == state

    fresh = engine.setup(cfg, bundle)
    assert fresh.scaler.state_dict()["scale"] == 65536.0  # the default, before resume
    epoch, _, _ = engine._resume(tmp_path, cfg, fresh)
    assert epoch == 1 and fresh.scaler.state_dict() == state
    assert float(fresh.scaler.scale(torch.tensor(0.5))) == 512.0


# --------------------------------------------------------------------------------------------
# Validation without attribute labels
# --------------------------------------------------------------------------------------------


class _BandColourModel(nn.Module):
    """A stand-in for a trained model, with an embedding a test can compute by hand: the mean
    colour of each band of 8 rows, rounded to an integer, from the 0..255 pixels that the eval
    transform normalised (B, 3 * H / 8); attribute logits 0. Integer embeddings keep every
    distance exact (see the test); a randomly initialised network instead puts all images
    within ~0.3 of each other, with match / non-match gaps of 1e-6 that rounding can flip."""

    def forward(self, images: torch.Tensor) -> ModelOutput:
        mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
        std = torch.tensor(IMAGENET_STD)[:, None, None]
        pixels = torch.round((images * std + mean) * 255)  # (B, 3, H, W) 0..255
        emb = torch.cat([band.mean((2, 3)) for band in pixels.split(8, dim=2)], 1).round()
        zero = emb[:, :1] * 0
        logits = {t.name: zero.expand(-1, t.num_outputs) for t in TASKS}
        return ModelOutput(embedding=emb, triplet_features=emb, attribute_logits=logits)


def _band_colours(path) -> np.ndarray:
    """The hand computation of _BandColourModel's embedding of one image file (float64)."""
    pixels = np.asarray(T.Resize((SIZE, SIZE))(read_image(path)), np.float64)  # (H, W, 3)
    return np.round(np.concatenate([pixels[r:r + 8].mean((0, 1))
                                    for r in range(0, SIZE, 8)]))


def test_validation_without_attributes_is_reid_metrics_of_brute_force_distances(
        synth_market, tmp_path):
    """A custom dataset with no attribute column: validate returns exactly mAP / rank-1 /
    rank-5 / mINP of reid_metrics on float64 brute-force distances between embeddings this
    test computes by hand, and no attribute accuracy.

    Exact on every CPU: the embeddings are integers 0..255 (12 of them), so every squared
    distance is an integer below 2^24, exact in float32 whatever the summation order; sqrt
    is correctly rounded, distinct integers up to 12 * 255^2 keep distinct float32 roots
    (gaps >= 5.6e-4, ulp 6e-5), and equal ones tie in both matrices, broken by index in both.

    Mutations caught: the market protocol replaced by ``seed`` (same-camera matches kept:
    mAP 0.283 for 0.103); cosine distances for the configured Euclidean (mAP 0.109).
    (Its embeddings average whole rows, so they do not see a flip: not a test of flip_test.)"""
    root = make_custom_copy(synth_market, tmp_path / "reid_only", [])
    cfg = _config(root, tmp_path / "run")
    bundle = engine.build_data(cfg)
    val = bundle.val
    got = engine.validate(cfg, _BandColourModel(), val, bundle.train_targets,
                          torch.device("cpu"))
    assert set(got) == {"mAP", "rank1", "rank5", "mINP"}  # no accuracy, mA, majority

    q = np.stack([_band_colours(r.path) for r in val.query])  # (Q, 12)
    g = np.stack([_band_colours(r.path) for r in val.gallery])  # (G, 12)
    dist = np.array([[math.sqrt(((a - b) ** 2).sum()) for b in g] for a in q])  # (Q, G)
    qids, gids, qcams, gcams = labels_and_cameras(val)
    expected = reid_metrics(dist, qids, gids, qcams, gcams, protocol="market")
    assert got == {"mAP": expected.mAP, "rank1": expected.rank(1), "rank5": expected.rank(5),
                   "mINP": expected.mINP}
