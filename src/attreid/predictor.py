"""``Predictor``: load a checkpoint once, then embed crops and predict their attributes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from attreid.checkpoint import file_sha256, load_checkpoint, load_model_weights
from attreid.config import from_dict
from attreid.data.io import read_image
from attreid.data.transforms import TransformConfig, build_transforms
from attreid.engine import resolve_device, transform_config
from attreid.inference import forward_checked
from attreid.metrics import predict_labels
from attreid.models import build_model
from attreid.models.output import ModelOutput
from attreid.schema import TASKS, describe

ImageInput = Union[Image.Image, str, Path]


@dataclass(frozen=True)
class Prediction:
    """Outputs for N images.

    Attributes:
        embeddings: (N, D) float32 re-ID embeddings (compare with Euclidean or cosine distance).
        probabilities: task name -> (N, C) class probabilities (C = 2 for binary tasks:
            [P(class 0), P(class 1)]).
        labels: (N, 12) int64 predicted class per task, in the order of ``attreid.schema.TASKS``.
    """

    embeddings: np.ndarray
    probabilities: dict[str, np.ndarray]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.embeddings)

    def attributes(self, index: int) -> dict[str, str]:
        """Class names of image ``index``, e.g. ``{"gender": "female", ...}``."""
        return describe(self.labels[index])


def _probabilities(logits: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    out = {}
    for task in TASKS:
        value = logits[task.name]
        if task.is_binary:
            p1 = torch.sigmoid(value.reshape(-1))
            out[task.name] = torch.stack([1 - p1, p1], dim=1).numpy()
        else:
            out[task.name] = torch.softmax(value, dim=1).numpy()
    return out


def preprocess_images(images: Sequence[ImageInput],
                      transform: Callable[[Image.Image], torch.Tensor]) -> torch.Tensor:
    """Decode paths, then apply the evaluation ``transform``: (N, 3, H, W) float32."""
    pil = [img if isinstance(img, Image.Image) else read_image(img) for img in images]
    return torch.stack([transform(img.convert("RGB")) for img in pil])


class Predictor:
    """Inference with a trained checkpoint: the one path predict, index, serve and export use.

    Preprocessing (resize to the training size, ImageNet normalisation) comes from the
    checkpoint's config. ``flip=True`` averages the outputs of each image and its mirror.

    Example::

        predictor = Predictor("runs/demo/resnet/best.pt")
        result = predictor.predict(["a.jpg", "b.jpg"])
        result.embeddings.shape, result.attributes(0)["gender"]
    """

    def __init__(self, checkpoint: str | Path, device: str | None = None, batch_size: int = 64,
                 flip: bool = False, amp: str = "none") -> None:
        state = load_checkpoint(checkpoint)
        self.checkpoint = Path(checkpoint)
        self.config = from_dict(state["config"])
        self.device = resolve_device(device or "auto")
        self.model = build_model(**state["model_config"])
        load_model_weights(self.model, state["model"], checkpoint)
        self.model.to(self.device).eval()
        self.transform_config: TransformConfig = transform_config(self.config)
        self._transform = build_transforms(self.transform_config, train=False)
        self.batch_size = batch_size
        self.flip = flip
        self.amp = amp

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

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Decode, resize and normalise: (N, 3, H, W) float32."""
        return preprocess_images(images, self._transform)

    def _tensor_batch(self, batch: torch.Tensor) -> torch.Tensor:
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise ValueError(f"expected an image batch (N, 3, H, W), got {tuple(batch.shape)}")
        if batch.dtype == torch.uint8:  # raw pixels: resize and normalise here
            size = (self.transform_config.height, self.transform_config.width)
            x = F.interpolate(batch.float() / 255, size=size, mode="bilinear",
                              antialias=True, align_corners=False)
            mean = torch.tensor(self.transform_config.mean).view(1, 3, 1, 1)
            std = torch.tensor(self.transform_config.std).view(1, 3, 1, 1)
            return (x - mean) / std
        return batch.float()

    def _run(self, x: torch.Tensor) -> ModelOutput:
        return forward_checked(self.model, x.to(self.device), self.flip, self.device, self.amp)

    def predict(self, images: Sequence[ImageInput] | torch.Tensor) -> Prediction:
        """Embed images and predict their attributes.

        Args:
            images: PIL images or file paths (decoded, resized, normalised here), or a tensor
                batch (N, 3, H, W): uint8 pixels are resized and normalised, float tensors are
                taken as already preprocessed.
        """
        embeddings, logits = [], {}
        n = len(images)
        for start in range(0, n, self.batch_size):
            chunk = images[start:start + self.batch_size]
            x = self._tensor_batch(chunk) if isinstance(chunk, torch.Tensor) \
                else self.preprocess(chunk)
            out = self._run(x)
            embeddings.append(out.embedding.cpu())
            for name, value in out.attribute_logits.items():
                logits.setdefault(name, []).append(value.cpu())
        if not embeddings:
            raise ValueError("predict() needs at least one image")
        merged = {k: torch.cat(v) for k, v in logits.items()}
        return Prediction(embeddings=torch.cat(embeddings).numpy(),
                          probabilities=_probabilities(merged),
                          labels=predict_labels(merged).numpy())
