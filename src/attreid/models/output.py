"""The one output type every attreid model returns, in train and in eval mode."""

from __future__ import annotations

from dataclasses import dataclass

import torch


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
