"""Batched feature and attribute extraction: the one path validation, evaluation and search use."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from attreid.data.dataset import ImageDataset
from attreid.data.records import ImageRecord
from attreid.data.transforms import TransformConfig, build_transforms
from attreid.models.output import ModelOutput
from attreid.utils.backend import cpu_bf16_native


@dataclass
class Features:
    """Extracted outputs for N images.

    Attributes:
        embeddings: (N, D) float32 re-ID embeddings.
        logits: task name -> (N, 1) or (N, C) float32 attribute logits.
    """

    embeddings: torch.Tensor
    logits: dict[str, torch.Tensor]


def autocast_context(device: torch.device, amp: str) -> ContextManager:
    """Autocast for ``amp`` in ``none``/``bf16``/``fp16`` on ``device`` (fp16 needs a GPU)."""
    if amp == "none":
        return nullcontext()
    if amp not in ("bf16", "fp16"):
        raise ValueError(f"amp={amp!r}: expected none, bf16 or fp16")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp=fp16 needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


AMP_MODES = ("auto", "none", "bf16", "fp16")
EXTRACT_BATCH = 128
"""Images per forward pass of :func:`extract` unless told otherwise."""


def resolve_amp(amp: str, device: torch.device) -> str:
    """The precision ``amp`` means on ``device``: ``auto`` is bf16 on CUDA (fp16 where the GPU
    has no bf16) and on a CPU with native bf16 instructions (:func:`attreid.utils.backend.
    cpu_bf16_native`), float32 (``none``) on other CPUs; other modes are returned as they are.

    Raises:
        ValueError: a mode other than auto, none, bf16, fp16.
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp={amp!r}: expected one of {', '.join(AMP_MODES)} (none is "
                         "float32)")
    if amp != "auto":
        return amp
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device.type == "cpu" and cpu_bf16_native() else "none"


def to_float(out: ModelOutput) -> ModelOutput:
    """Cast every tensor of an output to float32 (after autocast, before losses/metrics)."""
    return ModelOutput(
        embedding=out.embedding.float(),
        triplet_features=out.triplet_features.float(),
        attribute_logits={k: v.float() for k, v in out.attribute_logits.items()},
        id_logits=None if out.id_logits is None else out.id_logits.float(),
    )


@torch.inference_mode()
def forward_tta(model: nn.Module, images: torch.Tensor, flip: bool) -> ModelOutput:
    """Float32 outputs of ``model``; with ``flip``, averaged with those of the mirrored batch."""
    out = to_float(model(images))
    if not flip:
        return out
    flipped = to_float(model(torch.flip(images, dims=[3])))
    return ModelOutput(
        embedding=(out.embedding + flipped.embedding) / 2,
        triplet_features=(out.triplet_features + flipped.triplet_features) / 2,
        attribute_logits={k: (v + flipped.attribute_logits[k]) / 2
                          for k, v in out.attribute_logits.items()},
    )


def all_finite(out: ModelOutput) -> bool:
    """Whether the embedding and every attribute logit of ``out`` are finite."""
    tensors = [out.embedding, *out.attribute_logits.values()]
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all())


def forward_checked(model: nn.Module, images: torch.Tensor, flip: bool, device: torch.device,
                    amp: str) -> ModelOutput:
    """:func:`forward_tta` under ``amp`` autocast; a batch whose outputs are not finite under
    bf16/fp16 is recomputed in float32 (CPU bf16 kernels have returned NaN on Intel AMX, see
    :mod:`attreid.utils.backend`), so reduced precision never turns into a NaN embedding.

    Args:
        images: (N, 3, H, W) normalised batch on ``device``.
    Returns:
        Float32 outputs; non-finite only where the float32 model itself gives them.
    """
    with autocast_context(device, amp):
        out = forward_tta(model, images, flip)
    if amp == "none" or all_finite(out):
        return out
    return forward_tta(model, images, flip)


def extract(model: nn.Module, records: Sequence[ImageRecord], transform: TransformConfig,
            device: torch.device, batch_size: int = EXTRACT_BATCH, workers: int = 0,
            amp: str = "none",
            channels_last: bool = False, flip: bool = False,
            progress: Callable[[int], None] | None = None) -> Features:
    """Embed ``records`` and predict their attributes with ``model`` in eval mode.

    Args:
        transform: sizes and normalisation (the eval transform of this config is used).
        flip: test-time augmentation: average the outputs of the image and its mirror.
        progress: called with the number of images done after each batch.
    """
    data = ImageDataset(records, build_transforms(transform, train=False))
    loader = DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers)
    was_training = model.training
    model.eval()
    embeddings, logits = [], {}
    done = 0
    try:
        for batch in loader:
            images = batch["image"].to(device)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            out = forward_checked(model, images, flip, device, amp)
            embeddings.append(out.embedding.cpu())
            for name, value in out.attribute_logits.items():
                logits.setdefault(name, []).append(value.cpu())
            done += len(images)
            if progress:
                progress(done)
    finally:
        model.train(was_training)
    return Features(torch.cat(embeddings), {k: torch.cat(v) for k, v in logits.items()})
