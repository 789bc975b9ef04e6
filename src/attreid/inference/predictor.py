"""``Predictor``: load a checkpoint once, then embed crops and predict their attributes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image

from attreid.config import from_dict
from attreid.data.io import ImageInputError, check_channels, load_rgb
from attreid.data.transforms import TransformConfig, build_transforms, transform_config
from attreid.inference.extraction import (
    Features,
    autocast_context,
    forward_checked,
    resolve_amp,
)
from attreid.metrics import predict_labels
from attreid.models import build_model
from attreid.models.output import ModelOutput, probabilities
from attreid.schema import MISSING, TASK_NAMES, TASKS, trained_tasks_of
from attreid.utils.backend import resolve_device
from attreid.utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_model_weights,
    require_checkpoint,
)
from attreid.utils.files import file_sha256

ImageInput = Union[Image.Image, str, Path, np.ndarray]
"""What predict() decodes: a PIL image, a file path (``str`` or ``os.PathLike``) or a numpy array
(H, W, 3) uint8 of pixels in the order given by ``channels`` (``"rgb"`` or ``"bgr"``)."""

__all__ = ["ImageInput", "ImageInputError", "Prediction", "Predictor", "preprocess_images",
           "trained_tasks_of"]


@dataclass(frozen=True)
class Prediction:
    """Outputs for N images.

    A model trained on data that labels only some attribute tasks (or none: re-ID only) has
    heads for the other tasks that never saw a label; their outputs are noise.
    ``trained_tasks`` names the tasks whose predictions mean something, and what is shown to
    people follows it: ``labels`` is :data:`~attreid.schema.MISSING` (-1, unknown) in the
    columns of the other tasks and :meth:`attributes` leaves them out. ``probabilities`` keeps
    the raw outputs of every head (the feature store and the search index hold all 40 columns
    in a fixed layout), so read it only for the tasks in ``trained_tasks``
    (:meth:`trained_probabilities` gives just those).

    Attributes:
        embeddings: (N, D) float32 re-ID embeddings (compare with Euclidean or cosine distance).
        probabilities: task name -> (N, C) class probabilities (C = 2 for binary tasks:
            [P(class 0), P(class 1)]), every task, raw (see above).
        labels: (N, 12) int64 predicted class per task, in the order of ``attreid.schema.TASKS``;
            -1 for the tasks not in ``trained_tasks``.
        trained_tasks: the tasks the model was trained on (order of ``TASK_NAMES``).
    """

    embeddings: np.ndarray
    probabilities: dict[str, np.ndarray]
    labels: np.ndarray
    trained_tasks: tuple[str, ...] = TASK_NAMES

    def __len__(self) -> int:
        return len(self.embeddings)

    def attributes(self, index: int) -> dict[str, str]:
        """Class names of image ``index`` for the trained tasks, e.g. ``{"gender": "female",
        ...}``; a task the model was trained without is left out (never a guess)."""
        row = self.labels[index]
        return {task.name: task.classes[int(row[t])] for t, task in enumerate(TASKS)
                if task.name in self.trained_tasks and int(row[t]) != MISSING}

    def trained_probabilities(self) -> dict[str, np.ndarray]:
        """``probabilities`` of the trained tasks only."""
        return {name: self.probabilities[name] for name in self.trained_tasks}


def make_prediction(embeddings: np.ndarray, logits: dict[str, torch.Tensor],
                    trained_tasks: Sequence[str] = TASK_NAMES) -> Prediction:
    """A :class:`Prediction` from embeddings and per-task logits: probabilities of every head,
    labels -1 for the tasks not in ``trained_tasks``."""
    labels = predict_labels(logits).numpy()
    untrained = [t for t, name in enumerate(TASK_NAMES) if name not in trained_tasks]
    if untrained:
        labels[:, untrained] = MISSING
    return Prediction(embeddings=embeddings, probabilities=probabilities(logits),
                      labels=labels, trained_tasks=tuple(trained_tasks))


def preprocess_images(images: Sequence[ImageInput] | torch.Tensor,
                      transform: Callable[[Image.Image], torch.Tensor],
                      channels: str | None = None) -> torch.Tensor:
    """Decode and apply the evaluation ``transform``: (N, 3, H, W) float32.

    Every kind of input reaches ``transform`` as the same upright 8-bit RGB PIL image, so a
    file, that file opened with PIL and its pixels as an array or a uint8 tensor give the same
    tensor:

    * a path: :func:`attreid.data.io.read_image`; a PIL image: :func:`attreid.data.io.to_rgb`
      (EXIF orientation applied, 16-bit keeps the high byte, alpha composited on black);
    * a numpy array (H, W, 3) uint8: :func:`attreid.data.io.from_array` with ``channels``
      (``"bgr"`` for OpenCV frames, ``"rgb"`` for RGB arrays), required for arrays;
    * a uint8 tensor (N, 3, H, W) of pixels, RGB unless ``channels="bgr"``: each image made a
      PIL image, so it is resized by the same PIL resize as a file;
    * a floating-point tensor (N, 3, H, W): taken as already preprocessed (returned as float32,
      on its device; every other input gives a CPU tensor; ``channels`` must not be given).

    Raises:
        ImageInputError: an element (or the batch) is of an unsupported type or dtype, an array
            without ``channels``, or an unknown ``channels``.
        ValueError: a tensor not shaped (N, 3, H, W).
        DataError: a file is missing or cannot be decoded.
    """
    order = check_channels(channels)
    if isinstance(images, torch.Tensor):
        return _tensor_batch(images, transform, order)
    return torch.stack([transform(load_rgb(img, order)) for img in images])


def _tensor_batch(batch: torch.Tensor, transform: Callable[[Image.Image], torch.Tensor],
                  channels: str | None) -> torch.Tensor:
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected an image batch (N, 3, H, W), got {tuple(batch.shape)}")
    if batch.dtype == torch.uint8:  # raw pixels: the PIL path of a file, resize included
        if channels == "bgr":
            batch = batch.flip(1)
        pixels = batch.detach().cpu().permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, 3)
        return torch.stack([transform(Image.fromarray(p)) for p in pixels])
    if not batch.dtype.is_floating_point:
        raise ImageInputError(f"image tensor of dtype {batch.dtype}: expected uint8 pixels "
                              "(resized and normalised here) or a float batch already "
                              "preprocessed")
    if channels is not None:
        raise ImageInputError(f"channels={channels!r} with a float tensor: a float batch is "
                              "taken as already preprocessed (RGB, normalised); pass uint8 "
                              "pixels to have their channel order applied, or drop channels")
    return batch.detach().float()


def _check_batch(images: object) -> Sequence[ImageInput] | torch.Tensor:
    """``images`` as predict() takes it: a tensor batch, or a list of paths / PIL images /
    arrays (a 4-D array (N, H, W, 3) is N arrays)."""
    if isinstance(images, (str, os.PathLike, Image.Image)):
        raise ImageInputError(f"predict() takes a sequence of images, got one "
                              f"{type(images).__name__}; pass [image]")
    if isinstance(images, np.ndarray) and images.ndim != 4:
        raise ImageInputError(f"predict() takes a sequence of images, got one numpy array "
                              f"{tuple(images.shape)}; pass [frame] (or a batch (N, H, W, 3))")
    if isinstance(images, torch.Tensor):
        return images
    try:
        return list(images)  # type: ignore[call-overload]
    except TypeError:
        raise ImageInputError(f"predict() takes a sequence of images (paths, PIL images or "
                              f"numpy arrays) or a tensor (N, 3, H, W), got "
                              f"{type(images).__name__}") from None


class Predictor:
    """Inference with a trained checkpoint: the one path predict, index, serve and export use.

    Preprocessing (resize to the training size, ImageNet normalisation) comes from the
    checkpoint's config. ``flip=True`` averages the outputs of each image and its mirror.
    ``trained_tasks`` names the attribute tasks the checkpoint was trained on (labelled in its
    training data; all 12 for a checkpoint made before this was recorded); predictions of the
    others are reported as unknown (see :class:`Prediction`).

    ``amp`` is the precision of the forward pass: ``none`` (float32), ``bf16``, ``fp16`` (CUDA
    only) or ``auto`` (bf16 on CUDA and on CPUs with native bf16, else float32; see
    :func:`attreid.inference.extraction.resolve_amp`); ``self.amp`` is the resolved mode. A
    batch whose reduced-precision outputs are not finite is recomputed in float32.

    Raises:
        CheckpointError: the checkpoint cannot be read or does not fit its model.
        ValueError: an unknown ``amp``, or fp16 without a CUDA device.

    Example::

        predictor = Predictor("runs/demo/resnet/best.pt")
        result = predictor.predict(["a.jpg", "b.jpg"])
        result.embeddings.shape, result.attributes(0)["gender"]
    """

    def __init__(self, checkpoint: str | Path, device: str | None = None, batch_size: int = 64,
                 flip: bool = False, amp: str = "none") -> None:
        checkpoint = require_checkpoint(checkpoint)  # a shipped model's name -> its file
        state = load_checkpoint(checkpoint)
        self.checkpoint = checkpoint
        self.config = from_dict(state["config"])
        self.device = resolve_device(device or "auto")
        self.model = build_model(**state["model_config"])
        load_model_weights(self.model, state["model"], checkpoint)
        try:
            self.trained_tasks: tuple[str, ...] = trained_tasks_of(state.get("trained_tasks"))
        except ValueError as exc:
            raise CheckpointError(f"{checkpoint}: {exc}") from None
        self.model.to(self.device).eval()
        self.transform_config: TransformConfig = transform_config(self.config)
        self._transform = build_transforms(self.transform_config, train=False)
        self.batch_size = batch_size
        self.flip = flip
        self.amp = resolve_amp(amp, self.device)
        autocast_context(self.device, self.amp)  # refuses fp16 without CUDA, here not at predict

    @property
    def embedding_dim(self) -> int:
        return int(self.model.config["embedding_dim"])

    @property
    def distance(self) -> str:
        """The distance the model was trained with: ``euclidean`` or ``cosine``."""
        distance = self.config.loss.distance
        return "euclidean" if distance == "squared" else distance

    @cached_property
    def checkpoint_sha256(self) -> str:
        """SHA-256 of the checkpoint file (identifies the model, e.g. in a search index)."""
        return file_sha256(self.checkpoint)

    def preprocess(self, images: Sequence[ImageInput] | torch.Tensor,
                   channels: str | None = None) -> torch.Tensor:
        """Decode, resize and normalise: (N, 3, H, W) float32 (see :func:`preprocess_images`;
        ``channels`` as :meth:`predict`)."""
        return preprocess_images(images, self._transform, channels)

    def _run(self, x: torch.Tensor) -> ModelOutput:
        return forward_checked(self.model, x.to(self.device), self.flip, self.device, self.amp)

    def embed_batch(self, x: torch.Tensor) -> Features:
        """Outputs of one preprocessed batch ``x`` (N, 3, H, W) float32 (see :meth:`preprocess`):
        float32 embeddings (N, D) and logits per task, on the CPU."""
        out = self._run(x)
        return Features(out.embedding.cpu(), {k: v.cpu() for k, v in
                                              out.attribute_logits.items()})

    def predict(self, images: Sequence[ImageInput] | torch.Tensor,
                channels: str | None = None) -> Prediction:
        """Embed images and predict their attributes.

        Args:
            images: PIL images, file paths or numpy arrays (H, W, 3) uint8 (decoded, turned
                upright by their EXIF orientation, resized, normalised here), or a tensor batch
                (N, 3, H, W): uint8 pixels are resized and normalised exactly as a file of those
                pixels, float tensors are taken as already preprocessed. A path, that file
                opened with PIL and its pixels as an array or uint8 tensor give the same
                embedding (one conversion, :func:`attreid.data.io.to_rgb`; one resize, PIL's).
            channels: the channel order of numpy arrays, required for them: ``"bgr"`` for
                OpenCV frames (``cv2.imread``, ``cv2.VideoCapture``), ``"rgb"`` for RGB arrays
                (PIL, imageio, matplotlib). A uint8 tensor is RGB unless ``"bgr"`` is given;
                paths and PIL images are decoded to RGB whatever it says.

        Raises:
            ImageInputError: an input of another type (bytes, one bare image), a numpy array
                without ``channels`` or not (H, W, 3) uint8, or an unknown ``channels``.
            DataError: a file is missing or cannot be decoded.
        """
        channels = check_channels(channels)
        images = _check_batch(images)
        embeddings, logits = [], {}
        n = len(images)
        for start in range(0, n, self.batch_size):
            chunk = images[start:start + self.batch_size]
            x = self.preprocess(chunk, channels)
            out = self._run(x)
            embeddings.append(out.embedding.cpu())
            for name, value in out.attribute_logits.items():
                logits.setdefault(name, []).append(value.cpu())
        if not embeddings:
            raise ValueError("predict() needs at least one image")
        merged = {k: torch.cat(v) for k, v in logits.items()}
        return make_prediction(torch.cat(embeddings).numpy(), merged, self.trained_tasks)
