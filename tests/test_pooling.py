"""GeM pooling (Radenović et al. 2018) against its formula, and in the built models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attreid.models import build_model
from attreid.models.pooling import AvgPool, GeM, build_pool


def _maps(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(4, 6, 8, 4, generator=gen, dtype=torch.float64) * 3  # (B, C, H, W) >= 0


def test_gem_is_the_generalized_mean_by_brute_force():
    x = _maps()
    gem = GeM(3.0).double()
    want = np.array([[np.mean(c.numpy() ** 3) ** (1 / 3) for c in image] for image in x])
    np.testing.assert_allclose(gem(x).detach().numpy(), want, rtol=1e-12)


def test_gem_at_one_is_average_pooling_and_grows_towards_max_pooling():
    x = _maps(1)
    torch.testing.assert_close(GeM(1.0).double()(x), AvgPool()(x), rtol=1e-12, atol=1e-12)
    low, high = GeM(2.0).double()(x), GeM(200.0).double()(x)
    peak = x.amax(dim=(2, 3))
    assert (high >= low).all() and (high <= peak + 1e-12).all()
    assert (peak - high).max() < 0.1 * (peak - low).max()  # p = 200 is close to the maximum


def test_gem_exponent_is_learned_and_zero_maps_stay_finite():
    gem = GeM()
    x = torch.zeros(2, 3, 4, 4)  # a post-ReLU map can be all zero
    x[0, 0, 1, 1] = 2.0
    out = gem(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and gem.p.grad is not None and torch.isfinite(gem.p.grad)
    assert gem.p.grad != 0


def test_unknown_pooling_and_bad_exponent_are_named():
    with pytest.raises(ValueError, match="'max'.*avg.*gem"):
        build_pool("max")
    with pytest.raises(ValueError, match="valid poolings"):
        build_model("resnet", backbone="resnet18", pooling="max")
    with pytest.raises(ValueError, match="> 0"):
        GeM(0.0)


@pytest.mark.parametrize("variant", ["resnet", "convhead", "attention"])
def test_gem_models_rebuild_from_their_config_and_old_configs_mean_average(variant):
    torch.manual_seed(0)
    model = build_model(variant, backbone="resnet18", pooling="gem", embedding_dim=16,
                        input_size=(64, 32)).eval()
    assert "head.pool.p" in model.state_dict()
    rebuilt = build_model(**model.config).eval()
    rebuilt.load_state_dict(model.state_dict())  # strict: the same parameters, p included
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).embedding, model(x).embedding)
    old = {k: v for k, v in model.config.items() if k != "pooling"}  # a checkpoint before GeM
    assert isinstance(build_model(**old).head.pool, AvgPool)


def test_the_config_chooses_the_pooling():
    from attreid.config import load_config
    from attreid.training.builders import model_kwargs

    assert model_kwargs(load_config("demo"), 3)["pooling"] == "avg"
    assert model_kwargs(load_config("demo", ["model.pooling=gem"]), 3)["pooling"] == "gem"
