"""Batched training augmentation on uint8 image tensors, the recipes of
:mod:`attreid.data.transforms` applied to a whole batch at once.

Input: a batch of images already resized to ``(cfg.height, cfg.width)`` as the eval transform
resizes them (e.g. from :class:`attreid.data.cache.ImageCache`), uint8 ``(B, 3, H, W)`` on any
device. Output: float32 ``(B, 3, H, W)``, normalised, on the same device.

* ``"study"``: horizontal flip (per sample, ``flip_p``) and a random affine (rotation uniform in
  ``[-affine_degrees, affine_degrees]``, translation uniform in ``+-affine_translate * size``
  rounded to whole pixels, as RandomAffine draws them) on the [0, 1] image, black (0) outside
  the image, then Normalize. Flip and affine are fused into one ``grid_sample``.
* ``"reid"``: flip, then a crop of the zero-padded image (``pad`` pixels; equivalently an integer
  shift in ``[-pad, pad]`` with black fill), then Normalize, then RandomErasing (torchvision's
  defaults: area scale (0.02, 0.33), aspect ratio (0.3, 3.3) drawn log-uniformly, up to 10
  tries, value 0 after normalisation, per-sample probability ``erasing_p``).
* ``"none"`` and every eval batch (``train=False``): Normalize only; bit-identical to
  ``build_transforms(cfg, train=False)`` when the batch holds the eval-resized images.

Differences from the PIL pipeline (same distributions of parameters, other pixels):

* the affine resamples bilinearly by default (RandomAffine uses nearest); pass
  ``interpolation="nearest"`` for nearest. Bilinear also blends the image border with the black
  fill over one pixel, where nearest gives a hard edge. Pure whole-pixel shifts are exact with
  either mode.
* the affine and crop act on the image already resized to (H, W); in the PIL pipeline they act
  after Resize too, so this is the same order and only the resampling differs.
* randomness comes from the ``torch.Generator`` given to ``__call__`` (drawn on the CPU, so a
  batch is the same on CPU and CUDA), not from the global generator, and the draws are made in
  another order than torchvision's, so the same seed gives other (equally distributed) choices.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from attreid.data.transforms import TransformConfig
from attreid.utils.transfer import to_device

ERASE_SCALE: tuple[float, float] = (0.02, 0.33)
ERASE_RATIO: tuple[float, float] = (0.3, 3.3)
ERASE_TRIES = 10
INTERPOLATIONS = ("bilinear", "nearest")


class BatchAugment:
    """The augmentation of ``cfg.recipe`` (``train=True``) or the eval normalisation, batched.

    Args:
        cfg: sizes, recipe, probabilities and normalisation (see :class:`TransformConfig`).
        train: ``False`` gives Normalize only, whatever the recipe.
        channels_last: return the batch in ``torch.channels_last`` memory format.
        interpolation: ``"bilinear"`` or ``"nearest"`` resampling of the study affine.
    """

    def __init__(self, cfg: TransformConfig, train: bool, channels_last: bool = False,
                 interpolation: str = "bilinear") -> None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {interpolation!r}: expected one of {INTERPOLATIONS}")
        self.cfg, self.channels_last, self.interpolation = cfg, channels_last, interpolation
        self.recipe = cfg.recipe if train else "none"
        self._stats: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None
                 ) -> torch.Tensor:
        """Augment ``images`` uint8 ``(B, 3, H, W)`` -> normalised float32 ``(B, 3, H, W)``.

        ``generator`` (a CPU generator; ``None`` for the global one) makes it deterministic.
        """
        self._check(images)
        if self.recipe == "study":
            out = self._normalize(self._study(images, generator))
        elif self.recipe == "reid":
            out = self._reid(images, generator)
        else:
            out = self._normalize(images.float().div(255))
        if self.channels_last:
            return out.contiguous(memory_format=torch.channels_last)
        return out.contiguous()

    def __repr__(self) -> str:
        return (f"BatchAugment(recipe={self.recipe!r}, size=({self.cfg.height}, "
                f"{self.cfg.width}), interpolation={self.interpolation!r})")

    def _check(self, images: torch.Tensor) -> None:
        expected = (3, self.cfg.height, self.cfg.width)
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"expected uint8 images of shape (B, {expected[0]}, {expected[1]}, "
                             f"{expected[2]}), got {images.dtype} {tuple(images.shape)}")

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` in [0, 1] -> normalised, with torchvision's Normalize arithmetic."""
        key = (x.device, x.dtype)
        if key not in self._stats:  # copied to the device once, not every batch
            self._stats[key] = tuple(
                to_device(torch.tensor(v, dtype=x.dtype).view(1, 3, 1, 1), x.device)
                for v in (self.cfg.mean, self.cfg.std))
        mean, std = self._stats[key]
        return x.sub_(mean).div_(std)

    def _study(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Flip + affine: uint8 ``(B, 3, H, W)`` -> float ``(B, 3, H, W)`` in [0, 1]."""
        b, _, h, w = images.shape
        flip, angle, shift = _study_params(self.cfg, b, generator)  # (B,), (B,), (B, 2)
        x = images.float().div(255)
        if self.cfg.affine_degrees == 0 and self.cfg.affine_translate == 0:
            return torch.where(to_device(flip, x.device).view(b, 1, 1, 1), x.flip(-1), x)
        theta = to_device(affine_theta(angle, shift, flip, h, w), x.device)  # (B, 2, 3)
        grid = F.affine_grid(theta, [b, 3, h, w], align_corners=False)  # (B, H, W, 2)
        return F.grid_sample(x, grid, mode=self.interpolation, padding_mode="zeros",
                             align_corners=False)

    def _reid(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Flip + pad/crop + Normalize + erasing: uint8 ``(B, 3, H, W)`` -> normalised float."""
        b, _, h, w = images.shape
        flip = torch.rand(b, generator=generator) < self.cfg.flip_p  # (B,)
        offset = torch.randint(0, 2 * self.cfg.pad + 1, (b, 2), generator=generator)  # (B, 2)
        boxes = erasing_boxes(b, h, w, self.cfg.erasing_p, generator)  # (B, 4)
        x = _pad_crop(images, flip, offset, self.cfg.pad)  # (B, 3, H, W) uint8
        x = self._normalize(x.float().div(255))
        mask = _box_mask(to_device(boxes, x.device), h, w)  # (B, 1, H, W)
        return x.masked_fill_(mask, 0.0)


def _study_params(cfg: TransformConfig, b: int, generator: torch.Generator | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flip ``(B,)`` bool, angle ``(B,)`` degrees, shift ``(B, 2)`` whole pixels (x, y)."""
    flip = torch.rand(b, generator=generator) < cfg.flip_p
    u = torch.rand(b, 3, generator=generator, dtype=torch.float64) * 2 - 1  # (B, 3) in [-1, 1)
    angle = u[:, 0] * cfg.affine_degrees
    max_shift = torch.tensor([cfg.affine_translate * cfg.width,
                              cfg.affine_translate * cfg.height], dtype=torch.float64)
    shift = torch.round(u[:, 1:] * max_shift)
    return flip, angle, shift


def affine_theta(angle: torch.Tensor, shift: torch.Tensor, flip: torch.Tensor, height: int,
                 width: int) -> torch.Tensor:
    """``F.affine_grid`` matrices of torchvision's ``affine`` (rotation about the centre, angle
    in degrees counter-clockwise, then ``shift`` pixels), after an optional horizontal flip.

    Args:
        angle: ``(B,)`` degrees; shift: ``(B, 2)`` pixels (x, y); flip: ``(B,)`` bool.

    Returns:
        float32 ``(B, 2, 3)`` mapping output to input in normalised coordinates
        (``align_corners=False``).
    """
    rad = torch.deg2rad(angle.double())
    cos, sin = torch.cos(rad), torch.sin(rad)
    tx, ty = shift[:, 0].double(), shift[:, 1].double()
    # torchvision's inverse matrix in centred pixel coordinates: [[cos, sin], [-sin, cos]]
    m02 = -(cos * tx + sin * ty)
    m12 = -(-sin * tx + cos * ty)
    row0 = torch.stack([cos, sin * height / width, m02 * 2 / width], dim=1)  # (B, 3)
    row1 = torch.stack([-sin * width / height, cos, m12 * 2 / height], dim=1)
    row0 = torch.where(flip.view(-1, 1), -row0, row0)  # flip first: mirror the sampled x
    return torch.stack([row0, row1], dim=1).float()


def _pad_crop(images: torch.Tensor, flip: torch.Tensor, offset: torch.Tensor, pad: int
              ) -> torch.Tensor:
    """Flip, pad with zeros and crop at ``offset`` ``(B, 2)`` (top, left) in one gather.

    uint8 ``(B, 3, H, W)`` -> uint8 ``(B, 3, H, W)`` (a channels-last strided view).
    """
    b, _, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images  # (B, 3, H+2p, W+2p)
    top, left = to_device(offset, device).split(1, dim=1)  # (B, 1)
    rows = top + torch.arange(h, device=device)  # (B, H)
    ahead = left + torch.arange(w, device=device)  # (B, W)
    mirrored = (2 * pad + w - 1 - left) - torch.arange(w, device=device)
    cols = torch.where(to_device(flip, device).view(b, 1), mirrored, ahead)  # (B, W)
    batch = torch.arange(b, device=device).view(b, 1, 1)
    pixels = padded[batch, :, rows.view(b, h, 1), cols.view(b, 1, w)]  # (B, H, W, 3)
    return pixels.permute(0, 3, 1, 2)


def erasing_boxes(b: int, height: int, width: int, p: float,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw RandomErasing rectangles for ``b`` images of ``height`` x ``width``.

    Per sample, like torchvision's ``RandomErasing.get_params``: up to 10 tries of an area
    ``U(0.02, 0.33) * H * W`` and an aspect ratio ``exp(U(log 0.3, log 3.3))``; the first try
    that fits is placed uniformly. Erased with probability ``p`` when a try fits.

    Returns:
        int64 ``(B, 4)``: top, left, box height, box width; height 0 where nothing is erased.
    """
    apply = torch.rand(b, generator=generator) < p  # (B,)
    area = torch.empty(b, ERASE_TRIES, dtype=torch.float64).uniform_(
        *ERASE_SCALE, generator=generator) * (height * width)  # (B, T)
    log_ratio = torch.empty(b, ERASE_TRIES, dtype=torch.float64).uniform_(
        math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), generator=generator)
    place = torch.rand(b, 2, generator=generator, dtype=torch.float64)  # (B, 2)
    hs = torch.round(torch.sqrt(area * torch.exp(log_ratio))).long()  # (B, T)
    ws = torch.round(torch.sqrt(area / torch.exp(log_ratio))).long()
    fits = (hs < height) & (ws < width)  # (B, T)
    first = fits.long().argmax(dim=1, keepdim=True)  # (B, 1): the first try that fits
    bh, bw = hs.gather(1, first)[:, 0], ws.gather(1, first)[:, 0]  # (B,)
    top = (place[:, 0] * (height - bh + 1)).floor().long()
    left = (place[:, 1] * (width - bw + 1)).floor().long()
    bh = torch.where(apply & fits.any(dim=1), bh, torch.zeros_like(bh))
    return torch.stack([top, left, bh, bw], dim=1)


def _box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Boxes ``(B, 4)`` (top, left, h, w) -> bool mask ``(B, 1, H, W)``, True inside."""
    top, left, bh, bw = boxes.unbind(dim=1)  # (B,) each
    rows = torch.arange(height, device=boxes.device).view(1, height)
    cols = torch.arange(width, device=boxes.device).view(1, width)
    in_rows = (rows >= top.view(-1, 1)) & (rows < (top + bh).view(-1, 1))  # (B, H)
    in_cols = (cols >= left.view(-1, 1)) & (cols < (left + bw).view(-1, 1))  # (B, W)
    return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)
