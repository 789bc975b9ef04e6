"""Image transforms chosen by a small frozen configuration.

Recipes (train); every eval transform is the ``"none"`` pipeline:

* ``"study"``: Resize -> RandomHorizontalFlip -> RandomAffine(rotation, translation) -> ToTensor
  -> Normalize. No colour jitter: colours are attribute labels (upper/lower-body colour).
* ``"reid"``: Resize -> RandomHorizontalFlip -> Pad -> RandomCrop -> ToTensor -> Normalize
  -> RandomErasing (erased pixels set to 0 after normalisation, i.e. the mean colour).
* ``"none"``: Resize -> ToTensor -> Normalize.

Every pipeline first converts the image to RGB (:func:`attreid.data.io.to_rgb`), so the output
is always float32 ``(3, H, W)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision.transforms as T
from PIL import Image

from attreid.config import Config
from attreid.data.io import to_rgb

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
RECIPES: tuple[str, ...] = ("study", "reid", "none")


@dataclass(frozen=True)
class TransformConfig:
    """Transform settings; validated on construction.

    Attributes:
        height, width: output size in pixels (both > 0).
        recipe: train augmentation, one of :data:`RECIPES` (see the module docstring).
        flip_p: horizontal flip probability in [0, 1] (study and reid).
        affine_degrees: rotation range ``[-d, d]`` in degrees, >= 0 (study).
        affine_translate: max translation as a fraction of width / height, in [0, 1] (study).
        pad: border padding (zeros) before the random crop back to (height, width), >= 0 (reid).
        erasing_p: random erasing probability in [0, 1] (reid). The erased rectangle is set to 0
            after normalisation, i.e. to the ``mean`` colour, so it reads as "no information"
            rather than as a colour; ``denormalize`` shows it as the mean grey.
        mean, std: per-channel RGB normalisation (std > 0).
    """

    height: int = 128
    width: int = 64
    recipe: str = "study"
    flip_p: float = 0.5
    affine_degrees: float = 10.0
    affine_translate: float = 0.05
    pad: int = 10
    erasing_p: float = 0.5
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {self.recipe!r}; valid recipes: {', '.join(RECIPES)}")
        for name in ("height", "width"):
            _check_int(name, getattr(self, name), minimum=1)
        _check_int("pad", self.pad, minimum=0)
        for name in ("flip_p", "erasing_p", "affine_translate"):
            _check_range(name, getattr(self, name), 0.0, 1.0)
        _check_range("affine_degrees", self.affine_degrees, 0.0, 180.0)
        _check_channels("mean", self.mean, positive=False)
        _check_channels("std", self.std, positive=True)


def build_transforms(cfg: TransformConfig, train: bool) -> Callable[[Image.Image], torch.Tensor]:
    """Build the transform for a PIL image -> float32 tensor ``(3, height, width)``.

    ``train=False`` always gives the deterministic Resize -> ToTensor -> Normalize pipeline;
    ``train=True`` gives ``cfg.recipe`` (see the module docstring). Randomness comes from the
    global torch generator (seed it, or rely on DataLoader worker seeding).
    """
    size = (cfg.height, cfg.width)
    head: list[Callable] = [_ToRGB(), T.Resize(size)]
    tail: list[Callable] = [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    if not train or cfg.recipe == "none":
        return T.Compose(head + tail)
    if cfg.recipe == "study":
        translate = (cfg.affine_translate, cfg.affine_translate)
        augment = [
            T.RandomHorizontalFlip(cfg.flip_p),
            T.RandomAffine(degrees=cfg.affine_degrees, translate=translate),
        ]
        return T.Compose(head + augment + tail)
    augment = [T.RandomHorizontalFlip(cfg.flip_p), T.Pad(cfg.pad), T.RandomCrop(size)]
    erase = [T.RandomErasing(p=cfg.erasing_p, value=0)]
    return T.Compose(head + augment + tail + erase)


def denormalize(tensor: torch.Tensor, cfg: TransformConfig) -> torch.Tensor:
    """Undo ``Normalize``: ``(..., 3, H, W)`` normalised -> same shape in [0, 1] (clamped).

    Works on one image ``(3, H, W)`` or a batch ``(B, 3, H, W)``; returns a new float tensor.
    """
    if tensor.ndim < 3 or tensor.shape[-3] != 3:
        raise ValueError(f"expected a tensor of shape (..., 3, H, W), got {tuple(tensor.shape)}")
    mean = torch.tensor(cfg.mean, dtype=tensor.dtype, device=tensor.device).view(3, 1, 1)
    std = torch.tensor(cfg.std, dtype=tensor.dtype, device=tensor.device).view(3, 1, 1)
    return (tensor * std + mean).clamp(0.0, 1.0)


class _ToRGB:
    """Convert a PIL image to RGB with :func:`attreid.data.io.to_rgb` (the conversion of every
    image input: 16-bit keeps the high byte, alpha composited on black), so outputs have 3
    channels and a transform applied to any PIL image sees what a decoded file gives."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image if image.mode == "RGB" else to_rgb(image)

    def __repr__(self) -> str:
        return "ToRGB()"


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_range(name: str, value: object, low: float, high: float) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not low <= value <= high:  # type: ignore[operator]
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def _check_channels(name: str, value: object, positive: bool) -> None:
    numbers = isinstance(value, (tuple, list)) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not numbers or (positive and min(value) <= 0):  # type: ignore[type-var, arg-type]
        need = "3 positive numbers" if positive else "3 finite numbers"
        raise ValueError(f"{name} must be {need} (one per RGB channel), got {value!r}")


def transform_config(cfg: Config) -> TransformConfig:
    """The image transform settings of a training config: what a checkpoint's model needs at
    inference (size, normalisation) and what training augments with (recipe, erasing)."""
    d = cfg.data
    return TransformConfig(height=d.height, width=d.width, recipe=d.transform,
                           erasing_p=d.erasing_p)
