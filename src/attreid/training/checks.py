"""Configuration checks that run before anything starts: before the data is read or cached,
before torchrun starts processes. A setting that could only fail late (inside a rank, at the end
of the first epoch) or that would silently train nothing is refused here, as one
:class:`~attreid.config.ConfigError` naming every offending key and what to change.

:func:`check_training_data` does the same with the data loaded (records only, no image
decoded): what the batches and the validation set need.

May import: config, losses, models, data (names of valid choices). Imported by the engine and
the CLI.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from attreid.config import Config, ConfigError
from attreid.data.evalset import SPLITS
from attreid.data.records import DataError, ImageRecord
from attreid.data.transforms import RECIPES
from attreid.models import BACKBONES, MODELS
from attreid.models.pooling import POOLINGS
from attreid.schema import labelled_tasks
from attreid.training.losses import DISTANCES, MININGS, WEIGHTINGS

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("none", "cosine", "step")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune",
                 "max-autotune-no-cudagraphs")


def _choices(cfg: Config) -> list[str]:
    wanted = [("model.name", cfg.model.name, tuple(MODELS)),
              ("model.backbone", cfg.model.backbone, tuple(BACKBONES)),
              ("model.pooling", cfg.model.pooling, POOLINGS),
              ("loss.triplet", cfg.loss.triplet, MININGS),
              ("loss.distance", cfg.loss.distance, DISTANCES),
              ("loss.weighting", cfg.loss.weighting, WEIGHTINGS),
              ("optim.name", cfg.optim.name, OPTIMIZERS),
              ("optim.scheduler", cfg.optim.scheduler, SCHEDULERS),
              ("data.split", cfg.data.split, SPLITS),
              ("data.transform", cfg.data.transform, RECIPES),
              ("train.compile", cfg.train.compile, COMPILE_MODES)]
    return [f"{key}={value!r}: expected one of {', '.join(valid)}"
            for key, value, valid in wanted if value not in valid]


def _counts(cfg: Config) -> list[str]:
    wanted = [("data.p", cfg.data.p, 2, "identities per batch (the triplet loss needs "
               "negatives)"), ("data.k", cfg.data.k, 1, "image per identity"),
              ("optim.epochs", cfg.optim.epochs, 1, "epoch"),
              ("train.eval_every", cfg.train.eval_every, 1, "epoch between validations"),
              ("data.batches_per_epoch", cfg.data.batches_per_epoch, 0, "(0 = one pass)"),
              ("train.sync_every", cfg.train.sync_every, 0, "step (0 = auto)")]
    errors = [f"{key}={value}: at least {least} {what}"
              for key, value, least, what in wanted if value < least]
    budget = cfg.train.time_budget_min
    if not budget >= 0 or budget == float("inf"):  # NaN fails the first test
        errors.append(f"train.time_budget_min={budget}: expected minutes >= 0 (0 = no budget)")
    return errors


def _batch(cfg: Config, processes: int) -> list[str]:
    """Batch norm needs two values per channel; each process normalises its own share of the
    global P x K batch unless train.sync_bn merges them."""
    p, k = cfg.data.p, cfg.data.k
    if processes > 1 and p % processes:
        return [f"data.p={p} identities per batch cannot be split over {processes} processes "
                f"(--nproc); make data.p a multiple of {processes}"]
    share = p // processes * k
    if share >= 2 or (cfg.train.sync_bn and processes > 1 and p * k >= 2):
        return []
    where = f" per process (data.p / --nproc x data.k = {p}/{processes} x {k})" \
        if processes > 1 else f" (data.p x data.k = {p} x {k})"
    fix = ("raise data.k, use fewer processes (--nproc) or set train.sync_bn=true"
           if processes > 1 else "raise data.k")
    return [f"a batch of {share} image{where}: batch norm needs at least 2 in training; {fix}"]


def _zero_terms(cfg: Config) -> tuple[list[str], list[str]]:
    """Loss terms that would be zero for the whole run: (errors, warnings)."""
    errors, warnings = [], []
    id_trains = cfg.model.id_head and cfg.loss.id_weight > 0
    if cfg.loss.id_weight > 0 and not cfg.model.id_head:
        warnings.append(f"loss.id_weight={cfg.loss.id_weight} but model.id_head=false: there "
                        "is no ID loss; set model.id_head=true to train it")
    if cfg.data.k < 2:
        no_pair = ("data.k=1: no batch holds two images of one identity, so the triplet loss "
                   "is 0 at every step")
        if id_trains:
            warnings.append(f"{no_pair}; only the ID loss trains re-ID (set data.k >= 2, "
                            "e.g. --set data.k=4, to train the triplet term)")
        else:
            errors.append(f"{no_pair} and re-ID would not be trained at all; set data.k >= 2 "
                          "(e.g. --set data.k=4), or add the ID loss (model.id_head=true, "
                          "loss.id_weight=1)")
    return errors, warnings


def check_training_config(cfg: Config, processes: int = 1) -> list[str]:
    """Check ``cfg`` for a run of ``processes`` processes before anything starts.

    Returns:
        Warnings (one line each) for settings that run but train less than configured.
    Raises:
        ConfigError: every setting that would fail later or train nothing, in one message.
    """
    zero_errors, warnings = _zero_terms(cfg)
    errors = [*_choices(cfg), *_counts(cfg), *_batch(cfg, processes), *zero_errors]
    if errors:
        raise ConfigError(_join(errors))
    return warnings


def _join(errors: Sequence[str]) -> str:
    if len(errors) == 1:
        return errors[0]
    return f"{len(errors)} problems in the config: " + "; ".join(errors)


def _matchable(query: Sequence[ImageRecord], gallery: Sequence[ImageRecord]) -> bool:
    """Whether some query has a gallery entry of its identity on another camera (or any camera
    where cameras are unknown): the market protocol's condition for a valid query."""
    cams = all(r.camid is not None for r in [*query, *gallery])
    seen: dict[int, set] = {}
    for r in gallery:
        if r.pid > 0:
            seen.setdefault(r.pid, set()).add(r.camid if cams else None)
    return any(q.pid in seen and (not cams or seen[q.pid] - {q.camid}) for q in query)


def check_training_data(cfg: Config, root: str, train_pids: Sequence[int],
                        val_query: Sequence[ImageRecord] | None,
                        val_gallery: Sequence[ImageRecord] | None, all_vs_all: bool,
                        train_targets: np.ndarray) -> list[str]:
    """Check the loaded training records and validation split of ``cfg`` before any image is
    decoded or any process starts.

    Args:
        train_pids: the identity of every training image.
        val_query, val_gallery: the validation split (None: no validation).
        train_targets: (N_ids, 12) identity-level task labels, -1 where unknown.
    Returns:
        Warnings, e.g. a training set without attribute labels (the attribute term is 0).
    Raises:
        DataError: too few identities for ``data.p``, or a validation split in which no query
            can match (it would fail after the first epoch), naming the keys to change.
    """
    identities = len(set(train_pids))
    if cfg.data.p > identities:
        raise DataError(f"{root}: data.p={cfg.data.p} identities per batch, but the training "
                        f"split holds only {identities}; set data.p <= {identities}")
    if val_query is not None and val_gallery is not None and not all_vs_all \
            and not _matchable(val_query, val_gallery):
        raise DataError(
            f"{root}: no validation query has a match in the gallery under the standard "
            "Market-1501 protocol (it drops the gallery images of the query's identity from "
            "the query's camera: one camera for all images leaves none), so validation would "
            "fail after the first epoch; validate all-vs-all without the camera filter with "
            "--set data.split=random --set data.val_ids=N, or give the images their cameras")
    if train_targets.size and not labelled_tasks(train_targets):
        return ["the training data has no attribute labels: the attribute term is 0 for the "
                "whole run and only re-ID is trained (the checkpoint records no trained task)"]
    return []
