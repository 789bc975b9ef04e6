"""The models shipped inside the package (issue 28): trained checkpoints stored with the code,
loaded by name (``market1501``) wherever a checkpoint path is taken, each checked against its
SHA-256 before use, each with a model card (``attreid models --info NAME``,
docs/MODEL_CARD.md) and the calibration fitted for it.

May import: ``attreid.errors`` only (and the standard library): the checkpoint loader in
``attreid.utils`` resolves names through here.
"""

from attreid.zoo.registry import (
    DEFAULT_MODEL,
    ShippedModel,
    ZooError,
    find_by_sha256,
    is_model_name,
    recorded_checkpoint,
    resolve_checkpoint,
    shipped_model,
    shipped_models,
)

__all__ = ["DEFAULT_MODEL", "ShippedModel", "ZooError", "find_by_sha256", "is_model_name",
           "recorded_checkpoint", "resolve_checkpoint", "shipped_model", "shipped_models"]
