"""Tests for attreid.data.transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from attreid.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RECIPES,
    TransformConfig,
    build_transforms,
    denormalize,
)


def _image(seed: int = 0, size: tuple[int, int] = (48, 100)) -> Image.Image:
    """A random RGB image, (width, height) = size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _red(size: tuple[int, int] = (48, 100)) -> Image.Image:
    return Image.new("RGB", size, (255, 0, 0))


def _normalised_red() -> torch.Tensor:
    """(3,) value of a pure red pixel after ImageNet normalisation."""
    rgb = torch.tensor([1.0, 0.0, 0.0])
    return (rgb - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)


@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("train", [True, False])
def test_output_shape_and_dtype(recipe: str, train: bool) -> None:
    cfg = TransformConfig(height=96, width=40, recipe=recipe)
    torch.manual_seed(0)
    out = build_transforms(cfg, train=train)(_image())
    assert type(out) is torch.Tensor
    assert out.shape == (3, 96, 40) and out.dtype == torch.float32


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_non_rgb_input_gives_three_channels(mode: str) -> None:
    out = build_transforms(TransformConfig(), train=False)(_image().convert(mode))
    assert out.shape == (3, 128, 64)


@pytest.mark.parametrize("recipe", RECIPES)
def test_eval_is_deterministic_and_recipe_independent(recipe: str) -> None:
    image = _image(3)
    reference = build_transforms(TransformConfig(recipe="none"), train=False)(image)
    transform = build_transforms(TransformConfig(recipe=recipe), train=False)
    for seed in range(3):
        torch.manual_seed(seed)
        assert torch.equal(transform(image), reference)


def test_none_recipe_train_equals_eval() -> None:
    cfg = TransformConfig(recipe="none")
    image = _image(4)
    assert torch.equal(build_transforms(cfg, True)(image), build_transforms(cfg, False)(image))


def test_study_flip() -> None:
    cfg = TransformConfig(recipe="study", flip_p=1.0, affine_degrees=0.0, affine_translate=0.0)
    image = _image(5)
    flipped = build_transforms(cfg, train=True)(image)
    reference = build_transforms(cfg, train=False)(image)
    assert torch.allclose(flipped, reference.flip(-1))
    assert not torch.allclose(flipped, reference)


def test_study_train_is_random() -> None:
    transform = build_transforms(TransformConfig(recipe="study"), train=True)
    image = _image(6)
    torch.manual_seed(0)
    outs = [transform(image) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_study_keeps_colours() -> None:
    transform = build_transforms(TransformConfig(recipe="study", flip_p=0.5), train=True)
    red = _normalised_red().view(3, 1, 1)
    torch.manual_seed(0)
    for _ in range(10):
        centre = transform(_red())[:, 40:88, 16:48]  # away from the rotated / shifted border
        assert torch.allclose(centre, red.expand_as(centre), atol=1e-5)


def test_reid_random_erasing_erases() -> None:
    cfg = TransformConfig(recipe="reid", erasing_p=1.0, pad=0, flip_p=0.0)
    transform = build_transforms(cfg, train=True)
    torch.manual_seed(0)
    for _ in range(5):
        out = transform(_red())
        erased = (out == 0).all(dim=0)  # (H, W): pixels set to the mean colour
        assert erased.any()
        assert torch.allclose(out[:, ~erased], _normalised_red().view(3, 1), atol=1e-5)


def test_reid_without_erasing_keeps_image() -> None:
    cfg = TransformConfig(recipe="reid", erasing_p=0.0, pad=0, flip_p=0.0)
    image = _image(7)
    train = build_transforms(cfg, train=True)(image)
    assert torch.equal(train, build_transforms(cfg, train=False)(image))


def test_denormalize_inverts_normalize() -> None:
    cfg = TransformConfig()
    image = _image(8, size=(64, 128))  # already the target size: Resize keeps pixels
    out = build_transforms(cfg, train=False)(image)
    restored = denormalize(out, cfg)
    expected = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    assert torch.allclose(restored, expected, atol=1e-5)
    batch = denormalize(torch.stack([out, out * 100]), cfg)
    assert batch.shape == (2, 3, 128, 64)
    assert batch.min() >= 0 and batch.max() <= 1


def test_denormalize_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        denormalize(torch.zeros(4, 8, 8), TransformConfig())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"recipe": "autoaugment"}, "valid recipes: study, reid, none"),
        ({"height": 0}, "height"),
        ({"width": -4}, "width"),
        ({"height": 12.5}, "height"),
        ({"pad": -1}, "pad"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"erasing_p": -0.1}, "erasing_p"),
        ({"affine_translate": 2.0}, "affine_translate"),
        ({"affine_degrees": -5.0}, "affine_degrees"),
        ({"flip_p": float("nan")}, "flip_p"),
        ({"std": (0.2, 0.0, 0.2)}, "std"),
        ({"mean": (0.5, 0.5)}, "mean"),
    ],
)
def test_config_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TransformConfig(**kwargs)
