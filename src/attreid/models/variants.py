"""The study's three joint attribute + re-ID networks, and :func:`build_model`.

Every model is a :class:`JointModel`: a :class:`~attreid.models.backbones.Backbone` giving
``(mid, last)`` maps, a variant head giving the 12 attribute logits and the re-ID features, and
the shared embedding tail (optional BNNeck, optional ID classifier). ``forward`` returns one
:class:`~attreid.models.output.ModelOutput` in train and eval mode; losses live elsewhere.

Variants (``MODELS``):

* ``"resnet"`` (study baseline, :class:`BaselineHead`): pooled ``last`` -> Linear(C -> hidden) = h.
  Re-ID: BN(hidden), LeakyReLU, Linear(hidden -> D). Attributes: LeakyReLU(h), one Linear per task.
* ``"convhead"`` (study ConvHead, :class:`ConvHead`): per task a conv branch on ``mid``:
  Conv3x3(-> 16, no bias), BN, LeakyReLU, flatten, Linear(16 * Hm * Wm -> task outputs).
  Re-ID: Linear(C -> D) on pooled ``last``.
* ``"attention"`` (study Self-Attention, :class:`AttentionHead`): the 12 conv branches end in a
  Linear to a ``token_dim`` token; pooled ``last`` is projected to a 13th (global) token; the
  (B, 13, token_dim) tokens go through multi-head self-attention with a residual connection;
  token i feeds task i's head (LayerNorm + Linear), the global token the re-ID head.

Dropout (``dropout > 0``) sits right before every final Linear: each attribute head and the
re-ID projection.

The flattened size 16 * Hm * Wm of the conv branches depends on the image size and strides, so
``convhead`` and ``attention`` are built for one ``input_size`` (default 128x64): ``(Hm, Wm)`` is
measured with a dummy forward through the backbone at build time, and a batch of another size
raises a ValueError naming both sizes. ``resnet`` accepts any size (``input_size`` is recorded
but unused).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from attreid.models.backbones import Backbone, build_backbone
from attreid.models.output import ModelOutput
from attreid.models.pooling import POOLINGS, build_pool
from attreid.schema import TASK_NAMES, TASKS

BRANCH_CHANNELS = 16
"""Channels of each task's 3x3 conv branch (ConvHead and Self-Attention variants)."""

GLOBAL_TOKEN = "global"
"""Name of the re-ID token, the last of the attention variant's 13 tokens."""


def _linear_head(in_features: int, out_features: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, out_features))


class BaselineHead(nn.Module):
    """The study's baseline: pooled last map -> hidden -> (attribute heads, re-ID embedding)."""

    def __init__(self, in_channels: int, hidden_dim: int, embedding_dim: int,
                 dropout: float, pooling: str = "avg") -> None:
        super().__init__()
        self.pool = build_pool(pooling)
        self.fc = nn.Linear(in_channels, hidden_dim)
        self.reid = nn.Sequential(nn.BatchNorm1d(hidden_dim), nn.LeakyReLU(),
                                  _linear_head(hidden_dim, embedding_dim, dropout))
        self.act = nn.LeakyReLU()
        self.attributes = nn.ModuleDict(
            {t.name: _linear_head(hidden_dim, t.num_outputs, dropout) for t in TASKS}
        )

    def forward(self, mid: torch.Tensor, last: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``last`` (B, C, H, W) -> attribute logits {task: (B, n)}, features (B, D)."""
        h = self.fc(self.pool(last))  # (B, hidden)
        a = self.act(h)
        logits = {name: head(a) for name, head in self.attributes.items()}
        return logits, self.reid(h)


def _conv_branch(in_channels: int, mid_size: tuple[int, int], out_features: int,
                 dropout: float) -> nn.Sequential:
    """(B, in_channels, Hm, Wm) -> (B, out_features)."""
    flat = BRANCH_CHANNELS * mid_size[0] * mid_size[1]
    return nn.Sequential(
        nn.Conv2d(in_channels, BRANCH_CHANNELS, 3, padding=1, bias=False),
        nn.BatchNorm2d(BRANCH_CHANNELS),
        nn.LeakyReLU(),
        nn.Flatten(),  # (B, 16 * Hm * Wm)
        nn.Dropout(dropout),
        nn.Linear(flat, out_features),
    )


def _check_mid_size(mid: torch.Tensor, mid_size: tuple[int, int],
                    input_size: tuple[int, int]) -> None:
    if tuple(mid.shape[-2:]) != mid_size:
        raise ValueError(
            f"the mid feature map is {tuple(mid.shape[-2:])} but the model was built for "
            f"input_size={input_size} (mid map {mid_size}); build it with the batch's "
            "image size (input_size=(H, W))"
        )


class ConvHead(nn.Module):
    """The study's ConvHead: one conv branch per task on ``mid``; re-ID from pooled ``last``."""

    def __init__(self, mid_channels: int, out_channels: int, mid_size: tuple[int, int],
                 input_size: tuple[int, int], embedding_dim: int, dropout: float,
                 pooling: str = "avg") -> None:
        super().__init__()
        self.pool = build_pool(pooling)
        self.mid_size = mid_size
        self.input_size = input_size
        self.attributes = nn.ModuleDict(
            {t.name: _conv_branch(mid_channels, mid_size, t.num_outputs, dropout) for t in TASKS}
        )
        self.reid = _linear_head(out_channels, embedding_dim, dropout)

    def forward(self, mid: torch.Tensor, last: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``mid`` (B, Cm, Hm, Wm), ``last`` (B, C, H, W) -> {task: (B, n)}, features (B, D)."""
        _check_mid_size(mid, self.mid_size, self.input_size)
        logits = {name: branch(mid) for name, branch in self.attributes.items()}
        return logits, self.reid(self.pool(last))


class AttentionHead(nn.Module):
    """The study's Self-Attention head over 12 task tokens and one global token.

    Token order is explicit: ``token_names = TASK_NAMES + ("global",)``; token i is made by
    ``branches[token_names[i]]`` and read by ``heads[token_names[i]]``, so each task's branch
    feeds its own head (the study's code mixed the order up).

    The global token is ``Linear(out_channels -> token_dim)`` of pooled ``last``, or pooled
    ``last`` itself when ``out_channels == token_dim`` (ResNet-18/34 with 512). Attention is
    ``tokens + MultiheadAttention(tokens)`` (residual): with the attention output at zero every
    head sees exactly its own token, and the attention learns what to mix in.
    """

    def __init__(self, mid_channels: int, out_channels: int, mid_size: tuple[int, int],
                 input_size: tuple[int, int], embedding_dim: int, token_dim: int,
                 attention_heads: int, dropout: float, pooling: str = "avg") -> None:
        super().__init__()
        self.pool = build_pool(pooling)
        self.mid_size = mid_size
        self.input_size = input_size
        self.token_names: tuple[str, ...] = TASK_NAMES + (GLOBAL_TOKEN,)
        self.branches = nn.ModuleDict(
            {name: _conv_branch(mid_channels, mid_size, token_dim, 0.0) for name in TASK_NAMES}
        )
        self.global_proj = (nn.Identity() if out_channels == token_dim
                            else nn.Linear(out_channels, token_dim))
        self.attention = nn.MultiheadAttention(token_dim, attention_heads, batch_first=True)
        outputs = {t.name: t.num_outputs for t in TASKS} | {GLOBAL_TOKEN: embedding_dim}
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.LayerNorm(token_dim), nn.Dropout(dropout),
                                nn.Linear(token_dim, outputs[name]))
            for name in self.token_names
        })

    def forward(self, mid: torch.Tensor, last: torch.Tensor
                ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """``mid`` (B, Cm, Hm, Wm), ``last`` (B, C, H, W) -> {task: (B, n)}, features (B, D)."""
        _check_mid_size(mid, self.mid_size, self.input_size)
        tokens = [self.branches[name](mid) for name in TASK_NAMES]  # 12 x (B, T)
        tokens.append(self.global_proj(self.pool(last)))  # (B, T)
        x = torch.stack(tokens, dim=1)  # (B, 13, T)
        mixed, _ = self.attention(x, x, x, need_weights=False)  # (B, 13, T)
        x = x + mixed
        out = {name: self.heads[name](x[:, i]) for i, name in enumerate(self.token_names)}
        features = out.pop(GLOBAL_TOKEN)  # (B, D)
        return out, features


class JointModel(nn.Module):
    """Backbone + variant head + embedding tail; returns :class:`ModelOutput`.

    Attributes:
        backbone: the :class:`Backbone`.
        head: the variant head, ``head(mid, last) -> (attribute logits, features)``.
        bnneck: ``BatchNorm1d(D)`` with a frozen zero bias (BoT), or ``None``.
        classifier: ``Linear(D -> num_identities, bias=False)`` on the embedding, or ``None``.
        config: the :func:`build_model` keyword arguments (name included, ``weights`` excluded)
            that rebuild this architecture: ``build_model(**model.config)``.
        init_weights: the ``weights`` the backbone was initialised from (provenance only).
    """

    def __init__(self, backbone: Backbone, head: nn.Module, embedding_dim: int, bnneck: bool,
                 num_identities: int, config: dict[str, Any],
                 init_weights: str | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.bnneck = _make_bnneck(embedding_dim) if bnneck else None
        self.classifier = (nn.Linear(embedding_dim, num_identities, bias=False)
                           if num_identities > 0 else None)
        self.config = dict(config)
        self.init_weights = init_weights

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> backbone maps ``mid`` (B, Cm, Hm, Wm), ``last`` (B, C, Hl, Wl)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        return self.backbone(x)

    def forward_head(self, mid: torch.Tensor, last: torch.Tensor) -> ModelOutput:
        """Backbone maps -> :class:`ModelOutput` (embedding (B, D), 12 logits, id logits)."""
        logits, features = self.head(mid, last)  # {task: (B, n)}, (B, D)
        embedding = self.bnneck(features) if self.bnneck is not None else features
        id_logits = self.classifier(embedding) if self.classifier is not None else None
        return ModelOutput(embedding=embedding, triplet_features=features,
                           attribute_logits=logits, id_logits=id_logits)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        """(B, 3, H, W) normalised images -> :class:`ModelOutput`, in train and eval mode."""
        return self.forward_head(*self.forward_features(x))


def _make_bnneck(dim: int) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(dim)
    bn.bias.requires_grad_(False)  # BoT: no shift, so the embedding stays centred
    return bn


# ---------------------------------------------------------------- registry and factory


@dataclass(frozen=True)
class HeadOptions:
    """The head-related :func:`build_model` arguments, passed to the :data:`MODELS` builders."""

    embedding_dim: int
    hidden_dim: int
    dropout: float
    attention_heads: int
    token_dim: int
    input_size: tuple[int, int]
    pooling: str = "avg"


def _mid_size(backbone: Backbone, input_size: tuple[int, int]) -> tuple[int, int]:
    """Height and width of ``mid`` for an image of ``input_size``, by a dummy forward."""
    was_training = backbone.training
    backbone.eval()  # leave the BatchNorm running statistics untouched
    with torch.no_grad():
        mid = backbone.mid(torch.zeros(1, 3, *input_size))
    backbone.train(was_training)
    return int(mid.shape[-2]), int(mid.shape[-1])


def _build_baseline(backbone: Backbone, opts: HeadOptions) -> nn.Module:
    return BaselineHead(backbone.out_channels, opts.hidden_dim, opts.embedding_dim, opts.dropout,
                        opts.pooling)


def _build_convhead(backbone: Backbone, opts: HeadOptions) -> nn.Module:
    return ConvHead(backbone.mid_channels, backbone.out_channels,
                    _mid_size(backbone, opts.input_size), opts.input_size,
                    opts.embedding_dim, opts.dropout, opts.pooling)


def _build_attention(backbone: Backbone, opts: HeadOptions) -> nn.Module:
    if opts.token_dim % opts.attention_heads != 0:
        raise ValueError(f"token_dim={opts.token_dim} must be divisible by "
                         f"attention_heads={opts.attention_heads}")
    return AttentionHead(backbone.mid_channels, backbone.out_channels,
                         _mid_size(backbone, opts.input_size), opts.input_size,
                         opts.embedding_dim, opts.token_dim, opts.attention_heads, opts.dropout,
                         opts.pooling)


MODELS: dict[str, Callable[[Backbone, HeadOptions], nn.Module]] = {
    "resnet": _build_baseline,
    "convhead": _build_convhead,
    "attention": _build_attention,
}
"""Variant name -> head builder."""


def build_model(
    name: str,
    *,
    backbone: str = "resnet18",
    weights: str | os.PathLike[str] | None = None,
    study_strides: bool = False,
    last_stride: int = 2,
    input_size: Sequence[int] = (128, 64),
    embedding_dim: int = 128,
    hidden_dim: int = 512,
    bnneck: bool = False,
    num_identities: int = 0,
    dropout: float = 0.0,
    attention_heads: int = 2,
    token_dim: int = 512,
    pooling: str = "avg",
) -> JointModel:
    """Build a joint attribute + re-ID model.

    Args:
        name: variant, one of :data:`MODELS` (``"resnet"``, ``"convhead"``, ``"attention"``).
        backbone: one of :data:`attreid.models.backbones.BACKBONES`.
        weights: backbone initialisation: ``None``/``"random"``, ``"imagenet"`` (torchvision,
            downloaded once and cached) or a local state-dict file.
        study_strides: the study's high-resolution stem (128x64 -> ResNet layer3 16x16).
        last_stride: 2, or 1 to keep the last stage at the resolution of ``mid``.
        input_size: (H, W) of the images; fixes the conv branches' flattened size of
            ``convhead`` and ``attention`` (unused by ``resnet``).
        embedding_dim: D, the re-ID embedding size.
        hidden_dim: the ``resnet`` variant's hidden layer size.
        bnneck: add a BNNeck: ``embedding = BN(triplet_features)`` (bias frozen at 0).
        num_identities: size of the ID classifier on the embedding; 0 for none.
        dropout: dropout probability before every final Linear.
        attention_heads: heads of the ``attention`` variant's self-attention.
        token_dim: token size of the ``attention`` variant.
        pooling: global pooling of ``last`` for the re-ID features (and the ``resnet``
            attributes): ``"avg"`` or ``"gem"`` (:mod:`attreid.models.pooling`).

    Returns:
        A :class:`JointModel` with ``.config`` (these arguments without ``weights``).

    Raises:
        ValueError: unknown variant or backbone (listing the valid names), or a bad value.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {sorted(MODELS)}")
    size = _check_input_size(input_size)
    _check_positive(embedding_dim=embedding_dim, hidden_dim=hidden_dim, token_dim=token_dim,
                    attention_heads=attention_heads)
    if num_identities < 0:
        raise ValueError(f"num_identities must be >= 0 (0 = no ID head), got {num_identities}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; valid poolings: {list(POOLINGS)}")
    net = build_backbone(backbone, weights=weights, study_strides=study_strides,
                         last_stride=last_stride)
    opts = HeadOptions(embedding_dim, hidden_dim, dropout, attention_heads, token_dim, size,
                       pooling)
    config = dict(name=name, backbone=backbone, study_strides=study_strides,
                  last_stride=last_stride, input_size=size, embedding_dim=embedding_dim,
                  hidden_dim=hidden_dim, bnneck=bnneck, num_identities=num_identities,
                  dropout=dropout, attention_heads=attention_heads, token_dim=token_dim,
                  pooling=pooling)
    init = None if weights is None else str(weights)
    return JointModel(net, MODELS[name](net, opts), embedding_dim, bnneck, num_identities,
                      config, init)


def _check_input_size(input_size: Sequence[int]) -> tuple[int, int]:
    size = tuple(int(v) for v in input_size)
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"input_size must be (H, W) with H, W >= 32, got {tuple(input_size)}")
    return size  # type: ignore[return-value]


def _check_positive(**values: int) -> None:
    for key, value in values.items():
        if value < 1:
            raise ValueError(f"{key} must be >= 1, got {value}")
