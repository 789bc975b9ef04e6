"""The one output type every attreid model returns, in train and in eval mode, and the
decoding of its attribute logits into class probabilities."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attreid.schema import TASKS


@dataclass
class ModelOutput:
    """What a model returns for a batch of B images.

    Attributes:
        embedding: (B, D) the re-ID embedding used for retrieval (after BNNeck when enabled).
        triplet_features: (B, D) the features the metric (triplet) loss sees; the same tensor as
            ``embedding`` without BNNeck, the features before the BNNeck's BatchNorm with it.
        attribute_logits: task name -> logits, in the order of :data:`attreid.schema.TASKS`:
            (B, 1) for a binary task (BCE-with-logits), (B, C) for age/upcolor/downcolor.
        id_logits: (B, num_identities) identity-classification logits, or ``None`` when the
            model has no ID head.
    """

    embedding: torch.Tensor
    triplet_features: torch.Tensor
    attribute_logits: dict[str, torch.Tensor]
    id_logits: torch.Tensor | None = None


def probabilities(logits: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Class probabilities of each task from its logits (:data:`attreid.schema.TASKS` order):
    a binary task's (N,) or (N, 1) logit -> (N, 2) ``[1 - sigmoid, sigmoid]``, a multi-class
    task's (N, C) logits -> (N, C) softmax. CPU tensors in, float numpy arrays out.
    Raises KeyError when a task's logits are missing."""
    out = {}
    for task in TASKS:
        value = logits[task.name]
        if task.is_binary:
            p1 = torch.sigmoid(value.reshape(-1))
            out[task.name] = torch.stack([1 - p1, p1], dim=1).numpy()
        else:
            out[task.name] = torch.softmax(value, dim=1).numpy()
    return out
