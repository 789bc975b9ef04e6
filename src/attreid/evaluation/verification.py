"""``attreid calibrate``: embed a labelled set with a checkpoint, score every pair, fit the
distance -> P(same person) mapping (:mod:`attreid.inference.calibration`), write it beside the
checkpoint with its figures.

Which crops (``split``): ``test`` takes the query and gallery crops of a labelled test split
(Market-1501: 3,368 + 19,732), junk crops (id -1, partial views of a person) left out and every
distractor (id 0, not a person or no one in particular) an identity of its own, so it only ever
makes impostor pairs; ``study`` / ``random`` take the held-out identities of that split.
``max_ids`` keeps that many identities (drawn with ``seed``, distractors left out): the size of
the small labelled set a new camera network would calibrate on.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from attreid.data.evalset import build_evaluation_set
from attreid.data.load import load_dataset
from attreid.data.records import JUNK_ID, DataError, ImageRecord, attribute_matrix
from attreid.evaluation import verification_plots as figures
from attreid.inference.attribute_confidence import fit_attribute_confidence
from attreid.inference.backends import load_predictor
from attreid.inference.calibration import Calibration, calibration_path, fit_calibration
from attreid.inference.fits import fit_person, fit_search
from attreid.inference.files import extract_files
from attreid.metrics.verification import PairDistances, pair_distances
from attreid.models.output import probabilities
from attreid.schema import MISSING
from attreid.utils.checkpoint import require_checkpoint
from attreid.zoo import is_model_name

DISTRACTOR_ID = 0
"""Market-1501's distractor identity: crops that are no one in particular."""


@dataclass(frozen=True)
class LabelledCrops:
    """Crops with an identity each (distractors renumbered to unique negative ids below -1),
    a camera (-1 unknown) and their attribute labels (``MISSING`` where unknown)."""

    paths: list[Path]
    identities: np.ndarray  # (N,) int64
    cameras: np.ndarray  # (N,) int64
    targets: np.ndarray | None = None  # (N, 12) int64


def labelled_crops(records: Sequence[ImageRecord], max_ids: int = 0, seed: int = 0
                   ) -> LabelledCrops:
    """The crops of ``records`` that make pairs: no junk, no unlabelled; ``max_ids`` > 0 keeps
    that many identities drawn at random (and no distractors).

    Raises:
        DataError: no labelled crop, or fewer identities than ``max_ids``.
    """
    kept = [r for r in records if r.pid is not None and r.pid != JUNK_ID]
    people = sorted({r.pid for r in kept if r.pid != DISTRACTOR_ID})
    if max_ids:
        if max_ids > len(people):
            raise DataError(f"max_ids={max_ids}: the set has {len(people)} identities")
        chosen = set(np.random.default_rng(seed).choice(people, max_ids, replace=False).tolist())
        kept = [r for r in kept if r.pid in chosen]
    if not kept:
        raise DataError("no labelled crop to calibrate on (every crop is junk or unlabelled)")
    ids = np.array([r.pid for r in kept], dtype=np.int64)
    distractors = ids == DISTRACTOR_ID
    ids[distractors] = -2 - np.arange(int(distractors.sum()))  # each its own identity
    cams = np.array([-1 if r.camid is None else r.camid for r in kept], dtype=np.int64)
    return LabelledCrops([r.path for r in kept], ids, cams, attribute_matrix(kept))


def split_identities(crops: LabelledCrops, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two boolean masks (N,) over ``crops``: its people (ids >= 0) split in half at random,
    and its distractors (each an identity of its own) too."""
    rng = np.random.default_rng(seed)
    first: set[int] = set()
    for group in (crops.identities >= 0, crops.identities < 0):
        ids = np.unique(crops.identities[group])
        first |= set(rng.permutation(ids)[: len(ids) // 2].tolist())
    mask = np.array([i in first for i in crops.identities.tolist()])
    return mask, ~mask


@dataclass
class CalibrationRun:
    """What :func:`calibrate_checkpoint` returns: the calibration, its pairs, files written."""

    calibration: Calibration
    pairs: PairDistances
    path: Path
    files: list[Path] = field(default_factory=list)


def calibrate_checkpoint(checkpoint: Path | str, data_root: Path | str,
                         out: Path | str | None = None, method: str = "platt",
                         split: str = "test", layout: str = "auto", flip: bool = False,
                         max_ids: int = 0, seed: int = 0, backend: str = "auto",
                         device: str | None = None, batch_size: int = 128,
                         progress: Callable[[int, int], None] | None = None,
                         on_backend: Callable[[Any], None] | None = None) -> CalibrationRun:
    """Calibrate ``checkpoint`` on the labelled crops of ``data_root``'s ``split``; write the
    calibration to ``out`` (default: beside the checkpoint, ``calibration_path``) and its ROC
    and distance histograms beside it (``<name>.roc.png``, ``<name>.distances.png``).

    Args:
        progress: called with (crops embedded, crops in all).
        on_backend: called with the inference backend chosen (the CLI prints it).

    Raises:
        CheckpointError, DataError: the checkpoint or the data cannot be read (named).
        ValueError: the crops make no genuine or no impostor pair, or an unknown method.
    """
    if out is None and is_model_name(checkpoint):
        raise ValueError(f"{checkpoint}: a shipped model's calibration is part of the package; "
                         "pass --out for a calibration of your own (and verify/search "
                         "--calibration to use it)")
    require_checkpoint(checkpoint)
    dataset = load_dataset(data_root, layout)
    data = build_evaluation_set(dataset, split)
    records = data.gallery if data.all_vs_all else data.query + data.gallery
    crops = labelled_crops(records, max_ids, seed)
    predictor, choice = load_predictor(checkpoint, backend, device, batch_size, flip,
                                       probe_images=crops.paths[:64])
    if on_backend:
        on_backend(choice)
    total = len(crops.paths)
    feats = extract_files(predictor, crops.paths, batch_size,
                          (lambda done: progress(done, total)) if progress else None)
    pairs = pair_distances(feats.embeddings, crops.identities, crops.cameras, predictor.distance,
                           seed=seed)
    people = crops.identities >= 0
    search_pairs = pair_distances(feats.embeddings, crops.identities, crops.cameras,
                                  predictor.distance, seed=seed, people=people)
    query_paths = {r.path for r in ([] if data.all_vs_all else data.query)}
    queries = np.array([p in query_paths for p in crops.paths]) if query_paths else None
    search = fit_search(feats.embeddings.numpy(), crops.identities, predictor.distance,
                        queries)
    about = {"data": str(data_root), "split": split, "crops": pairs.num_images,
             "identities": pairs.num_identities, "max_ids": max_ids, "seed": seed,
             "pairs": f"{len(pairs.genuine):,} genuine + {pairs.num_impostor:,} impostor pairs",
             "genuine": "same identity, different camera", "junk": "left out",
             "distractors": "one identity each"}
    person = fit_person(feats.embeddings.numpy(), crops.identities >= 0, predictor.distance)
    calibration = fit_calibration(pairs, method, predictor.distance, flip,
                                  predictor.checkpoint_sha256, about, seed, person, search,
                                  search_pairs)
    calibration = replace(calibration, attributes=_attributes(feats.logits, crops, predictor))
    path = calibration.save(Path(out) if out else calibration_path(checkpoint))
    return CalibrationRun(calibration, pairs, path, write_figures(calibration, pairs, path))


def _attributes(logits: Any, crops: LabelledCrops, predictor: Any
                ) -> dict[str, dict[str, Any]] | None:
    """The attribute confidence of the trained tasks on crops with attribute labels, or None
    (no labels, or a re-ID-only model)."""
    trained = getattr(predictor, "trained_tasks", ())
    if crops.targets is None or not trained or not (crops.targets != MISSING).any():
        return None
    probs = probabilities(logits)
    fits = fit_attribute_confidence({t: probs[t] for t in trained if t in probs},
                                    crops.targets, crops.identities)
    return fits or None


def write_figures(calibration: Calibration, pairs: PairDistances, path: Path) -> list[Path]:
    """The ROC and the distance histograms of ``calibration`` beside its file ``path``."""
    stem = path.name.removesuffix(".json")
    return [figures.plot_roc({"calibration pairs": pairs}, calibration.thresholds,
                             path.with_name(stem + ".roc.png")),
            figures.plot_distance_histograms(pairs, calibration.thresholds,
                                             calibration.eer["threshold"],
                                             path.with_name(stem + ".distances.png"))]


def describe(run: CalibrationRun) -> dict[str, Any]:
    """The JSON a CLI prints: file, figures, operating points."""
    c = run.calibration
    return {"calibration": str(run.path), "figures": [str(f) for f in run.files],
            "method": c.method, "thresholds": c.thresholds, "tar": c.tar, "eer": c.eer,
            "unsupported": c.unsupported,
            "data": c.data, "person_check": None if c.person is None else {
                k: c.person[k] for k in ("threshold", "refuses", "distractors_passing",
                                         "people", "distractors") if k in c.person}}
