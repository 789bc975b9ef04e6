"""Training configuration: frozen dataclasses, YAML presets and ``--set key=value`` overrides.

Only the command line reads files into these dataclasses; library code takes plain arguments.
Presets live in ``attreid/configs/*.yaml`` and are named by their stem (``seed``, ``strong``,
``cpu``, ``demo``); a path to any YAML file works too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, get_type_hints

import yaml

from attreid.errors import AttreidError


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how batches are drawn.

    ``split``: ``study`` (the course layout's validation identities), ``random`` (``val_ids``
    identities drawn with ``split_seed``) — both validate all-vs-all on held-out training
    identities with the study's protocol — or ``test`` (train on all training identities,
    validate query against gallery with the standard Market-1501 protocol).

    ``cache``: decode every training image once into a uint8 tensor in memory and augment
    whole batches with tensor ops (:mod:`attreid.data.batch_transforms`) in the main process,
    instead of DataLoader workers running PIL transforms; on 2 CPU cores this brings the full
    training step to the speed of the bare model step (benchmarks/RESULTS.md).
    """

    root: str = ""
    layout: str = "auto"
    split: str = "test"
    val_ids: int = 225
    split_seed: int = 0
    height: int = 128
    width: int = 64
    transform: str = "study"
    erasing_p: float = 0.5
    p: int = 34
    k: int = 10
    workers: int = 2
    batches_per_epoch: int = 0  # 0 = one pass over the identities (num_ids // p)
    cache: bool = False  # decode once into memory, augment batches with tensor ops
    cache_dir: str = ""  # keep the decoded images as .npy here (reused by later runs)


@dataclass(frozen=True)
class ModelConfig:
    """Arguments of :func:`attreid.models.build_model` (``id_head`` sizes the ID head)."""

    name: str = "resnet"
    backbone: str = "resnet18"
    weights: str = "random"
    study_strides: bool = False
    last_stride: int = 2
    embedding_dim: int = 128
    hidden_dim: int = 512
    bnneck: bool = False
    id_head: bool = False
    dropout: float = 0.0
    pooling: str = "avg"


@dataclass(frozen=True)
class LossConfig:
    """Arguments of :class:`attreid.training.losses.MultiTaskLoss`."""

    triplet: str = "batch_all"
    margin: float = 1.0
    soft_margin: bool = False
    distance: str = "euclidean"
    id_weight: float = 0.0
    label_smoothing: float = 0.1
    weighting: str = "uncertainty"
    reid_weight: float = 1.0
    attr_weight: float = 1.0
    pos_weighting: bool = False


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and schedule. ``scheduler``: ``none``, ``cosine`` or ``step``."""

    name: str = "adam"
    lr: float = 3e-4
    weight_decay: float = 3e-3
    epochs: int = 50
    scheduler: str = "none"
    warmup_epochs: int = 0
    step_epochs: tuple[int, ...] = ()
    gamma: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """Engine settings. ``amp``: ``none`` (float32), ``bf16``, ``fp16`` (GPU only) or ``auto``
    (bf16 on CUDA and on CPUs with native bf16 instructions, float32 on other CPUs; see
    :func:`attreid.inference.extraction.resolve_amp`; on a CPU with native bf16 a short measured
    probe picks bf16 or float32, see :mod:`attreid.training.precision`). Under bf16 a step or
    batch that is not finite is recomputed in float32 (docs/RELIABILITY.md, "CPU precision on
    every machine"). ``time_budget_min`` > 0: ``optim.epochs`` becomes the most epochs the run
    may take, the number fixed after epoch 1 as the most that fit this many minutes of
    wall-clock (:mod:`attreid.training.budget`); 0: exactly ``optim.epochs``.

    ``sync_every``: steps between the host's reads of the loss (0 = auto: 1 on a CPU, 50 on
    CUDA). 1 checks every step and recomputes a non-finite bf16 step in float32; above 1 the
    step never waits for the device: loss terms add up on the device, a non-finite step is
    skipped there (fused optimizer, batch-norm statistics put back) and counted, and the run
    stops when every step between two reads was non-finite (:mod:`attreid.training.step`).
    ``compile``: ``none`` or a ``torch.compile`` mode for the model (``default``,
    ``reduce-overhead`` = CUDA graphs, ``max-autotune``, ``max-autotune-no-cudagraphs``)."""

    out: str = "runs/train"
    seed: int = 42
    device: str = "auto"
    amp: str = "none"
    channels_last: bool = False
    eval_every: int = 5
    flip_test: bool = False
    grad_clip: float = 0.0
    tensorboard: bool = True
    sync_bn: bool = False  # distributed runs: batch-norm statistics of the global batch
    time_budget_min: float = 0.0
    sync_every: int = 0
    compile: str = "none"


@dataclass(frozen=True)
class Config:
    """The whole training configuration."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


class ConfigError(AttreidError, ValueError):
    """A configuration file or override is invalid; the message names the key."""


def preset_names() -> list[str]:
    """Names of the presets shipped with attreid."""
    folder = resources.files("attreid") / "configs"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(source: str | Path) -> dict[str, Any]:
    path = Path(source)
    if not path.suffix and str(source) in preset_names():
        text = (resources.files("attreid") / "configs" / f"{source}.yaml").read_text()
        where = f"preset {source!r}"
    elif path.is_file():
        text, where = path.read_text(), str(path)
    else:
        raise ConfigError(f"config {source!r} not found: expected a YAML file or one of the "
                          f"presets {preset_names()}")
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _coerce(value: Any, kind: Any, key: str) -> Any:
    if kind is float and (_is_int(value) or isinstance(value, float)):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
        try:
            return float(value)
        except ValueError:
            pass
    if (kind is int and _is_int(value)) or (kind is bool and isinstance(value, bool)):
        return value
    if kind is str and (value is None or isinstance(value, str)):
        return value or ""
    if kind == tuple[int, ...] and isinstance(value, (list, tuple)) and all(map(_is_int, value)):
        return tuple(value)
    kind_name = getattr(kind, "__name__", str(kind))
    raise ConfigError(f"{key}: expected {kind_name}, got {value!r}")


def _section(cls: type, values: dict[str, Any], name: str) -> Any:
    hints = get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ConfigError(f"unknown keys in section {name!r}: {unknown}; valid: {sorted(hints)}")
    return cls(**{k: _coerce(v, hints[k], f"{name}.{k}") for k, v in values.items()})


def from_dict(data: dict[str, Any]) -> Config:
    """Build a Config from nested dicts (sections ``data``, ``model``, ``loss``, ...)."""
    hints = get_type_hints(Config)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ConfigError(f"unknown config sections {unknown}; valid: {sorted(hints)}")
    sections = {}
    for name, cls in hints.items():
        values = data.get(name) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"section {name!r}: expected a mapping, got {values!r}")
        sections[name] = _section(cls, values, name)
    return Config(**sections)


def to_dict(config: Config) -> dict[str, Any]:
    """Nested plain dicts (tuples as lists), ready for YAML or JSON."""
    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v
    return {f.name: {k: plain(v) for k, v in dataclasses.asdict(getattr(config, f.name)).items()}
            for f in fields(config)}


def parse_override(text: str) -> tuple[str, str, Any]:
    """Parse ``section.key=value``; the value is read as YAML (``1e-3``, ``true``, ``[10, 20]``)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected section.key=value")
    key, raw = text.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) != 2:
        raise ConfigError(f"override {text!r}: key must be section.key, e.g. optim.lr")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: cannot parse value ({exc})") from exc
    return parts[0], parts[1], value


def load_config(source: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a preset name or YAML file, apply ``section.key=value`` overrides, validate."""
    data = _read_yaml(source)
    for text in overrides:
        section, key, value = parse_override(text)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError(f"override {text!r}: section {section!r} is not a mapping")
        data[section][key] = value
    return from_dict(data)


def with_updates(config: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``config`` with some keys of some sections replaced."""
    return replace(config, **{name: replace(getattr(config, name), **values)
                              for name, values in sections.items()})


def dump_yaml(config: Config) -> str:
    """The resolved configuration as YAML text."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


PATH_KEYS = (("data", "root"), ("data", "cache_dir"), ("model", "weights"))
"""Keys that may hold a file system path: compared by the file they name, not their spelling."""


def _meaning(section: str, key: str, value: Any) -> Any:
    if (section, key) not in PATH_KEYS or not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    if key == "weights" and not (path.suffix in (".pt", ".pth") or path.exists()):
        return value  # a weight source name such as "imagenet", not a file
    return str(path.resolve())


def absolute_paths(config: Config) -> Config:
    """``config`` with its path keys (:data:`PATH_KEYS`) made absolute, as a run records them
    so that a later ``--resume`` from another folder compares the same files."""
    updates: dict[str, dict[str, Any]] = {}
    for section, key in PATH_KEYS:
        value = getattr(getattr(config, section), key)
        meaning = _meaning(section, key, value)
        if meaning != value:
            updates.setdefault(section, {})[key] = meaning
    return with_updates(config, **updates)


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       sections: tuple[str, ...] = ("data", "model", "loss")) -> list[str]:
    """The keys of ``sections`` whose values differ in meaning between two :func:`to_dict`
    configs, as ``"section.key: SAVED (checkpoint) vs CURRENT (now)"``. Paths are compared after
    resolving (relative to the working folder), a key missing on one side counts as a
    difference, and a key equal to its dataclass default on the other side does not (a
    checkpoint written before that key existed)."""
    defaults = to_dict(Config())
    out = []
    for section in sections:
        old, new = saved.get(section) or {}, current.get(section) or {}
        for key in sorted(set(old) | set(new)):
            fallback = defaults.get(section, {}).get(key)
            a = _meaning(section, key, old.get(key, fallback))
            b = _meaning(section, key, new.get(key, fallback))
            if a != b:
                out.append(f"{section}.{key}: {old.get(key, fallback)!r} (checkpoint) vs "
                           f"{new.get(key, fallback)!r} (now)")
    return out
