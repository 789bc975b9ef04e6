"""Tests for attreid.data.batch_transforms: batched recipes against the PIL pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
import torchvision.transforms.v2.functional as TF2
from PIL import Image
from torchvision.transforms import InterpolationMode

from attreid.data.batch_transforms import BatchAugment, affine_theta, erasing_boxes
from attreid.data.transforms import TransformConfig, build_transforms

H, W = 32, 16


def _images(b: int = 4, seed: int = 0, h: int = H, w: int = W) -> torch.Tensor:
    """Random uint8 images (B, 3, h, w)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), dtype=torch.uint8, generator=g)


def _pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy(), "RGB")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cfg(recipe: str, **kw) -> TransformConfig:
    return TransformConfig(height=H, width=W, recipe=recipe, **kw)


@pytest.mark.parametrize("recipe", ["study", "reid", "none"])
def test_eval_equals_pil_eval_transform(recipe: str) -> None:
    # a cache holds Resize((H, W)) of the original; eval then only normalises
    original = _pil(_images(1, seed=1, h=100, w=48)[0])
    resized = torch.from_numpy(np.array(T.Resize((H, W))(original)))  # what a cache holds
    reference = build_transforms(_cfg(recipe), train=False)(original)
    out = BatchAugment(_cfg(recipe), train=False)(resized.permute(2, 0, 1)[None])
    assert torch.allclose(out[0], reference, atol=1e-6, rtol=0)


def test_none_recipe_train_is_normalise_only() -> None:
    images = _images()
    reference = torch.stack([build_transforms(_cfg("none"), train=True)(_pil(i)) for i in images])
    assert torch.equal(BatchAugment(_cfg("none"), train=True)(images, _gen()), reference)


@pytest.mark.parametrize("recipe", ["study", "reid"])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_shapes_dtypes(recipe: str, train: bool, channels_last: bool) -> None:
    out = BatchAugment(_cfg(recipe), train, channels_last=channels_last)(_images(5), _gen())
    assert out.shape == (5, 3, H, W) and out.dtype == torch.float32
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)


def test_rejects_wrong_input() -> None:
    augment = BatchAugment(_cfg("study"), train=True)
    with pytest.raises(ValueError, match="uint8"):
        augment(_images().float(), _gen())
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 16\)"):
        augment(_images(h=64), _gen())
    with pytest.raises(ValueError, match="interpolation"):
        BatchAugment(_cfg("study"), train=True, interpolation="bicubic")


def _eval(images: torch.Tensor) -> torch.Tensor:
    return BatchAugment(_cfg("none"), train=False)(images)


def test_study_flip_without_affine_equals_flipped_eval() -> None:
    cfg = _cfg("study", flip_p=1.0, affine_degrees=0.0, affine_translate=0.0)
    images = _images()
    assert torch.equal(BatchAugment(cfg, train=True)(images, _gen()), _eval(images.flip(-1)))


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_study_affine_grid_path_at_zero_is_identity(flip_p: float) -> None:
    images = _images()
    theta = affine_theta(torch.zeros(4), torch.zeros(4, 2), torch.full((4,), flip_p > 0), H, W)
    x = images.float() / 255
    out = F.grid_sample(x, F.affine_grid(theta, [4, 3, H, W], align_corners=False),
                        align_corners=False)
    expected = x.flip(-1) if flip_p else x
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize("angle, tx, ty, flip", [(10.0, 0, 0, False), (-7.3, 2, -3, False),
                                                 (4.0, 1, 2, True), (0.0, 3, -2, True)])
def test_affine_theta_matches_torchvision_affine(angle: float, tx: int, ty: int,
                                                 flip: bool) -> None:
    x = _images(1).float() / 255
    theta = affine_theta(torch.tensor([angle]), torch.tensor([[tx, ty]]), torch.tensor([flip]),
                         H, W)
    out = F.grid_sample(x, F.affine_grid(theta, [1, 3, H, W], align_corners=False),
                        align_corners=False)
    source = x.flip(-1) if flip else x
    reference = TF2.affine(source, angle=angle, translate=[tx, ty], scale=1.0, shear=[0.0, 0.0],
                           interpolation=InterpolationMode.BILINEAR)
    assert torch.allclose(out, reference, atol=1e-5)


def test_whole_pixel_shift_nearest_equals_pil_random_affine() -> None:
    image = _images(1)[0]
    theta = affine_theta(torch.zeros(1), torch.tensor([[3, -2]]), torch.tensor([False]), H, W)
    x = image[None].float() / 255
    out = F.grid_sample(x, F.affine_grid(theta, [1, 3, H, W], align_corners=False),
                        mode="nearest", align_corners=False)
    reference = TF.to_tensor(TF.affine(_pil(image), angle=0.0, translate=[3, -2], scale=1.0,
                                       shear=[0.0, 0.0]))
    assert torch.equal(out[0], reference)


def test_study_fills_outside_black_before_normalising() -> None:
    cfg = _cfg("study", flip_p=0.0, affine_degrees=0.0, affine_translate=0.25)
    images = torch.full((16, 3, H, W), 200, dtype=torch.uint8)
    out = BatchAugment(cfg, train=True)(images, _gen(3))
    black = (torch.zeros(3) - torch.tensor(cfg.mean)) / torch.tensor(cfg.std)
    is_black = torch.isclose(out, black.view(1, 3, 1, 1), atol=1e-5).all(dim=1)  # (B, H, W)
    assert is_black.any()  # some samples were shifted and show the fill


@pytest.mark.parametrize("recipe", ["study", "reid"])
def test_deterministic_given_generator(recipe: str) -> None:
    augment, images = BatchAugment(_cfg(recipe), train=True), _images(8)
    first, again = augment(images, _gen(7)), augment(images, _gen(7))
    assert torch.equal(first, again)
    assert not torch.equal(first, augment(images, _gen(8)))


def _shifts(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every crop of the zero-padded image: brute-force reference of pad + random crop."""
    padded = F.pad(image, (pad, pad, pad, pad))
    return [padded[:, i:i + H, j:j + W] for i in range(2 * pad + 1) for j in range(2 * pad + 1)]


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_reid_crop_is_a_shift_of_the_padded_image(flip_p: float) -> None:
    cfg = _cfg("reid", flip_p=flip_p, erasing_p=0.0, pad=3)
    images = _images(6)
    out = BatchAugment(cfg, train=True)(images, _gen(1))
    for image, got in zip(images, out):
        source = image.flip(-1) if flip_p else image
        candidates = [_eval(c[None])[0] for c in _shifts(source, 3)]
        assert any(torch.equal(got, c) for c in candidates)


def test_reid_without_pad_flip_erase_equals_eval() -> None:
    cfg = _cfg("reid", flip_p=0.0, erasing_p=0.0, pad=0)
    images = _images()
    assert torch.equal(BatchAugment(cfg, train=True)(images, _gen()), _eval(images))


def test_reid_erasing_p1_zeros_a_rectangle_per_sample() -> None:
    cfg = _cfg("reid", flip_p=0.0, erasing_p=1.0, pad=0)
    images = torch.full((8, 3, H, W), 255, dtype=torch.uint8)  # white: never 0 when normalised
    out = BatchAugment(cfg, train=True)(images, _gen(2))
    for sample in out:
        zero = (sample == 0).all(dim=0)  # (H, W)
        rows, cols = zero.any(dim=1).nonzero(), zero.any(dim=0).nonzero()
        assert zero.sum() > 0
        box = zero[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()  # one filled rectangle


def test_erasing_boxes_within_bounds_and_scale() -> None:
    boxes = erasing_boxes(2000, 64, 32, 1.0, _gen(0))
    top, left, bh, bw = boxes.unbind(dim=1)
    assert (bh > 0).all() and (bh < 64).all() and (bw < 32).all()
    assert (top >= 0).all() and (top + bh <= 64).all() and (left + bw <= 32).all()
    area = (bh * bw).double() / (64 * 32)
    assert 0.01 < area.min() and area.max() < 0.4
    assert erasing_boxes(100, 64, 32, 0.0, _gen(0))[:, 2].eq(0).all()
    assert 0.3 < (erasing_boxes(2000, 64, 32, 0.5, _gen(1))[:, 2] > 0).float().mean() < 0.7


def test_flip_probability_roughly_respected() -> None:
    cfg = _cfg("study", flip_p=0.5, affine_degrees=0.0, affine_translate=0.0)
    images = _images(400)
    out = BatchAugment(cfg, train=True)(images, _gen(4))
    flipped = torch.tensor([torch.equal(o, e) for o, e in zip(out, _eval(images.flip(-1)))])
    assert 0.4 < flipped.float().mean() < 0.6


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("recipe", ["study", "reid", "none"])
def test_cuda_matches_cpu(recipe: str) -> None:
    augment, images = BatchAugment(_cfg(recipe), train=True), _images(8)
    on_cpu = augment(images, _gen(5))
    on_gpu = augment(images.cuda(), _gen(5))
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-4)
