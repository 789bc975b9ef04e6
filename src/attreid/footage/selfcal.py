"""Calibrating a new site without labels: the pairs come from its own tracks.

Two facts hold in any footage without anyone labelling it: two people seen by one camera at the
same moment are two different people, and the crops of one track are one person. So from the
tracks of ``attreid ingest`` (MOTChallenge text) and their video:

* *impostor* pairs: a crop of one track and a crop of another track of the same source whose
  time spans overlap (both people were in view together: they cannot be one person); crops of
  tracks that never met are not used (they might be one person, leaving and coming back);
* *genuine* pairs: two crops of one track at least ``min_gap_s`` apart (nearer ones are nearly
  the same image and would make matching look easy).

Those pairs are fitted like labelled ones (:func:`attreid.inference.calibration.fit_calibration`:
the mapping, the thresholds at FAR 1e-2 / 1e-3 / 1e-4, the FAR curve, the fitted
distributions); there is no person check (no distractor labels) and no search fit (no
identities across tracks). Attribute labels are not known either: the attribute confidence
(which values are sure, which heads beat their majority class: a property of the model's heads)
is carried over from the calibration beside the checkpoint when there is one (a shipped
model's), and says where it was fitted. The thresholds rest on the impostor pairs, which are
exact; the genuine pairs are same-camera and so easier than a search's, which moves P(same),
not the thresholds. ``benchmarks/label_free_calibration.py`` compares the result with labelled
calibrations of the same footage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from attreid.footage.detections import Detections, FootageError, cut_box
from attreid.footage.mot import read_mot
from attreid.footage.sources import SourceSpec, read_frames
from attreid.inference.calibration import Calibration, find_calibration, fit_calibration
from attreid.metrics.distance import pairwise_distance
from attreid.metrics.verification import TAIL_FAR, PairDistances

MIN_HEIGHT = 40.0
"""Crops lower than this (pixels) are not used: too small for re-ID."""


@dataclass(frozen=True)
class TrackCrops:
    """Crops cut from tracks, one row each.

    Attributes:
        embeddings: (N, D) float32.
        tracks: (N,) int64, unique over all sources (source number * 1,000,000 + track id).
        frames: (N,) int64, 0-based frame index in the source.
        times: (N,) float64, seconds (the frame's time).
        sources: (N,) int64, which source.
        spans: track -> (first, last) time in seconds of the whole track (all its frames).
    """

    embeddings: np.ndarray
    tracks: np.ndarray
    frames: np.ndarray
    times: np.ndarray
    sources: np.ndarray
    spans: dict[int, tuple[float, float]]


def track_crops(sources: list[tuple[SourceSpec, dict[int, Detections]]],
                embed: Callable[[list[np.ndarray]], np.ndarray], every: int = 5,
                min_height: float = MIN_HEIGHT, offset: int = 0,
                shared_ids: bool = False) -> TrackCrops:
    """Embed the tracked boxes of every ``every``-th frame of each source (from ``offset``).

    Args:
        sources: (source, its tracks by 1-based frame as :func:`read_mot` gives them).
        embed: BGR crops -> (N, D) embeddings (:func:`attreid.footage.pipeline.predictor_embedder`).
        shared_ids: the ids name people across sources (ground truth), not tracks of one.

    Raises:
        FootageError: a source cannot be read, or no crop is tall enough.
    """
    rows: dict[str, list[Any]] = {k: [] for k in ("emb", "track", "frame", "time", "source")}
    spans: dict[int, tuple[float, float]] = {}
    for number, (spec, tracks) in enumerate(sources):
        base = 0 if shared_ids else number * 1_000_000  # track ids unique over the sources
        wanted = {f - 1 for f in tracks}
        for frame in read_frames(spec):
            if frame.index not in wanted:
                continue
            found = tracks[frame.index + 1]
            for tid in found.track_ids:
                key = base + int(tid)
                lo, hi = spans.get(key, (frame.time, frame.time))
                spans[key] = (min(lo, frame.time), max(hi, frame.time))
            if (frame.index - offset) % every:
                continue
            keep = [i for i in range(len(found)) if found.heights[i] >= min_height]
            crops = [cut_box(frame.image, found.boxes[i]) for i in keep]
            inside = [k for k, c in enumerate(crops) if c.shape[0] >= 8 and c.shape[1] >= 4]
            if len(inside) < len(crops) / 2:
                width, height = frame.size
                raise FootageError(
                    f"{spec.path}: frame {frame.index}: {len(crops) - len(inside)} of "
                    f"{len(crops)} tracked boxes lie outside its {width}x{height} frames: were "
                    "the tracks made for this video (another frame size, e.g. ground truth "
                    "of the full-size frames)?")
            keep, crops = [keep[k] for k in inside], [crops[k] for k in inside]
            if not keep:
                continue
            rows["emb"].append(np.asarray(embed(crops), np.float32))
            rows["track"] += [base + int(found.track_ids[i]) for i in keep]
            rows["frame"] += [frame.index] * len(keep)
            rows["time"] += [frame.time] * len(keep)
            rows["source"] += [number] * len(keep)
    if not rows["emb"]:
        raise FootageError("no tracked crop of at least "
                           f"{min_height:g} px to calibrate on in {len(sources)} source(s)")
    return TrackCrops(np.concatenate(rows["emb"]), np.array(rows["track"], np.int64),
                      np.array(rows["frame"], np.int64), np.array(rows["time"], np.float64),
                      np.array(rows["source"], np.int64), spans)


def label_free_pairs(crops: TrackCrops, metric: str, min_gap_s: float = 1.0,
                     sample: int = 1_000_000, seed: int = 0,
                     labelled: bool = False) -> PairDistances:
    """Genuine and impostor pairs of :class:`TrackCrops` by the rules of the module docstring;
    ``labelled``: the tracks are true identities, every pair of two of them is an impostor
    pair (the labelled calibration the label-free one is compared with).

    Raises:
        FootageError: no genuine or no impostor pair (too few tracks that met, or tracks too
            short for two crops ``min_gap_s`` apart).
    """
    d = pairwise_distance(crops.embeddings, crops.embeddings, metric).double().numpy()
    i, j = np.triu_indices(len(crops.tracks), 1)
    ti, tj = crops.tracks[i], crops.tracks[j]
    same = ti == tj
    genuine = same & (np.abs(crops.times[i] - crops.times[j]) >= min_gap_s)
    first = np.array([crops.spans[int(t)][0] for t in crops.tracks])
    last = np.array([crops.spans[int(t)][1] for t in crops.tracks])
    met = ~same if labelled else (~same & (crops.sources[i] == crops.sources[j])
                                  & (np.maximum(first[i], first[j]) <= np.minimum(last[i],
                                                                                  last[j])))
    g, imp = np.sort(d[i[genuine], j[genuine]]), np.sort(d[i[met], j[met]])
    if not len(g) or not len(imp):
        raise FootageError(f"{len(crops.tracks)} crops of {len(crops.spans)} tracks give "
                           f"{len(g)} genuine and {len(imp)} impostor pairs: calibrating "
                           "without labels needs tracks of at least two crops "
                           f"{min_gap_s:g} s apart and people seen together")
    rng = np.random.default_rng(seed)
    drawn = imp if len(imp) <= sample else rng.choice(imp, sample, replace=False)
    tail = imp[:max(1, math.ceil(TAIL_FAR * len(imp)))]
    return PairDistances(g, tail, drawn, int(len(imp)), int(len(crops.tracks)),
                         int(len(np.unique(crops.tracks))))


def calibrate_footage(predictor: Any, sources: list[tuple[SourceSpec, Path]], every: int = 5,
                      min_gap_s: float = 1.0, seed: int = 0) -> tuple[Calibration,
                                                                       PairDistances]:
    """A calibration of ``predictor``'s checkpoint from the tracks of ``sources`` (each a
    source and its MOTChallenge tracks file, as ``attreid ingest`` writes them).

    Raises:
        FootageError: a source or tracks file cannot be read, or too few pairs.
    """
    from attreid.footage.pipeline import predictor_embedder

    loaded = [(spec, read_mot(tracks)) for spec, tracks in sources]
    crops = track_crops(loaded, predictor_embedder(predictor), every)
    pairs = label_free_pairs(crops, predictor.distance, min_gap_s, seed=seed)
    about = {"data": ", ".join(str(spec.path) for spec, _ in sources),
             "split": "label-free (tracks)", "crops": pairs.num_images,
             "identities": pairs.num_identities, "seed": seed,
             "pairs": f"{len(pairs.genuine):,} genuine + {pairs.num_impostor:,} impostor pairs",
             "genuine": f"crops of one track at least {min_gap_s:g} s apart",
             "impostors": "crops of two tracks in view of one camera at the same time",
             "every": every}
    calibration = fit_calibration(pairs, "platt", predictor.distance, bool(predictor.flip),
                                  predictor.checkpoint_sha256, about, seed)
    attributes, source = model_attributes(predictor)
    if attributes:
        about["attributes"] = f"attribute confidence carried over from {source}"
        calibration = replace(calibration, attributes=attributes, data=about)
    return calibration, pairs


def model_attributes(predictor: Any) -> tuple[dict[str, Any] | None, str]:
    """The attribute confidence of the calibration beside ``predictor``'s checkpoint (when it
    applies to it) and where that was fitted, or (None, "")."""
    found, _ = find_calibration(predictor.checkpoint, predictor.checkpoint_sha256,
                                bool(predictor.flip), predictor.distance)
    if found is None or not found.attributes:
        return None, ""
    return found.attributes, f"{Path(str(found.data.get('data', ''))).name or 'its data'} " \
        f"({found.data.get('split', '?')} split)"
