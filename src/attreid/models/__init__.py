"""Models: backbones and the three joint attribute + re-ID variants."""

from attreid.models.backbones import BACKBONES, Backbone, build_backbone
from attreid.models.output import ModelOutput
from attreid.models.variants import MODELS, JointModel, build_model

__all__ = [
    "BACKBONES",
    "MODELS",
    "Backbone",
    "JointModel",
    "ModelOutput",
    "build_backbone",
    "build_model",
]
