"""MOTChallenge text in and out, and the standard scores of detections and tracks.

A MOTChallenge line is ``frame, id, left, top, width, height, conf, x, y, z`` with 1-based
frames (MOT15 and later; ``det.txt`` has id -1). Ground truth rows with ``conf == 0`` are
ignored regions, as the MOTChallenge evaluation treats them. Scores come from py-motmetrics
(Milan et al., "MOT16: A Benchmark for Multi-Object Tracking", 2016; IDF1 from Ristani et al.,
ECCV 2016 workshops) and HOTA from TrackEval (Luiten et al., "HOTA: A Higher Order Metric for
Evaluating Multi-Object Tracking", IJCV 2021; the ``trackeval`` package, installed without its
dependencies by ``make install``), not from code of ours. Every frame that either side has
counts: a box found in a frame without ground truth is a false positive, as MOTChallenge
scores a whole sequence.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from attreid.footage.detections import Detections, FootageError, box_iou
from attreid.utils.files import atomic_write_text

MOT_COLUMNS = 10


def read_mot(path: Path | str, scale: float = 1.0,
             keep_ignored: bool = False) -> dict[int, Detections]:
    """MOTChallenge rows by 1-based frame: ``frame -> Detections`` (xyxy, scores from ``conf``
    clipped to [0, 1], track ids from ``id``), boxes multiplied by ``scale``.

    Args:
        keep_ignored: keep rows with ``conf == 0`` (ground truth marks ignored regions so).

    Raises:
        FootageError: missing file, or a line that is not at least 6 numbers (named by number).
    """
    path = Path(path)
    if not path.is_file():
        raise FootageError(f"{path}: MOTChallenge file not found")
    rows: list[list[float]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            values = [float(v) for v in line.replace(" ", "").split(",") if v != ""]
        except ValueError:
            raise FootageError(f"{path}: line {number} is not comma-separated numbers: "
                               f"{line[:80]!r}") from None
        if len(values) < 6 or not np.isfinite(values[:6]).all():
            raise FootageError(f"{path}: line {number} needs frame, id, left, top, width, "
                               f"height; got {line[:80]!r}")
        rows.append((values + [1.0] * MOT_COLUMNS)[:7])
    table = np.asarray(rows, np.float64).reshape(-1, 7)
    if not keep_ignored:
        table = table[table[:, 6] != 0]
    out: dict[int, Detections] = {}
    for frame in np.unique(table[:, 0]).astype(int):
        part = table[table[:, 0] == frame]
        boxes = np.column_stack([part[:, 2], part[:, 3], part[:, 2] + part[:, 4],
                                 part[:, 3] + part[:, 5]]) * scale
        out[int(frame)] = Detections(boxes, np.clip(part[:, 6], 0, 1), part[:, 1].astype(int))
    return out


def mot_lines(frame: int, detections: Detections) -> list[str]:
    """MOTChallenge lines of one frame (1-based ``frame``), boxes as left, top, width, height
    with two decimals; 3-D coordinates -1."""
    lines = []
    for box, score, tid in zip(detections.boxes, detections.scores, detections.track_ids):
        x1, y1, x2, y2 = (float(v) for v in box)
        lines.append(f"{frame},{int(tid)},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},"
                     f"{float(score):.4f},-1,-1,-1")
    return lines


def write_mot(path: Path | str, frames: Iterable[tuple[int, Detections]]) -> None:
    """Write ``(1-based frame, detections)`` pairs as a MOTChallenge file (atomically)."""
    lines = [line for frame, dets in frames for line in mot_lines(frame, dets)]
    atomic_write_text(Path(path), "\n".join(lines) + ("\n" if lines else ""))


def split_ignored(truth: dict[int, Detections]) -> tuple[dict[int, Detections],
                                                         dict[int, Detections]]:
    """Ground truth read with ``keep_ignored=True`` split into (boxes to find, ignored
    regions: the ``conf == 0`` rows, whose scores are 0)."""
    kept = {f: d.subset(d.scores > 0) for f, d in truth.items()}
    return ({f: d for f, d in kept.items() if len(d)},
            {f: d.subset(d.scores == 0) for f, d in truth.items() if (d.scores == 0).any()})


def drop_ignored(found: dict[int, Detections], truth: dict[int, Detections],
                 ignored: dict[int, Detections], iou: float = 0.5) -> dict[int, Detections]:
    """``found`` without the boxes that match an ignored region, as the MOTChallenge
    evaluation (TrackEval's preprocessing of MOT16 and later) removes them before scoring:
    per frame, a one-to-one assignment of found boxes to every ground-truth box, ignored ones
    included (IoU >= ``iou``, total IoU maximised); found boxes assigned to an ignored one are
    neither right nor wrong."""
    from scipy.optimize import linear_sum_assignment

    out = dict(found)
    for frame, skip in ignored.items():
        hyp = found.get(frame)
        if hyp is None or not len(hyp):
            continue
        both = Detections.concat([truth.get(frame, Detections()), skip])
        overlap = box_iou(both.boxes, hyp.boxes)
        rows, cols = linear_sum_assignment(np.where(overlap >= iou, -overlap, 1.0))
        first_ignored = len(both) - len(skip)
        drop = {c for r, c in zip(rows, cols) if r >= first_ignored and overlap[r, c] >= iou}
        out[frame] = hyp.subset(np.array([i not in drop for i in range(len(hyp))], bool))
    return out


@dataclass(frozen=True)
class DetectionScores:
    """Detection quality at an IoU threshold: one-to-one matches (Hungarian) per frame."""

    recall: float
    precision: float
    true_positives: int
    false_positives: int
    missed: int


def detection_scores(truth: dict[int, Detections], found: dict[int, Detections],
                     iou: float = 0.5) -> DetectionScores:
    """Recall and precision of ``found`` against ``truth`` (both ``frame -> Detections``, the
    frames of ``truth`` count): per frame, a one-to-one assignment maximising total IoU among
    pairs with IoU >= ``iou`` (scipy's ``linear_sum_assignment``)."""
    from scipy.optimize import linear_sum_assignment

    tp = fp = fn = 0
    for frame, gt in truth.items():
        hyp = found.get(frame, Detections())
        overlap = box_iou(gt.boxes, hyp.boxes)
        cost = np.where(overlap >= iou, -overlap, 1.0)
        rows, cols = linear_sum_assignment(cost) if overlap.size else ([], [])
        matched = int(sum(overlap[r, c] >= iou for r, c in zip(rows, cols)))
        tp += matched
        fn += len(gt) - matched
        fp += len(hyp) - matched
    return DetectionScores(tp / max(tp + fn, 1), tp / max(tp + fp, 1), tp, fp, fn)


def tracking_scores(truth: dict[int, Detections], found: dict[int, Detections],
                    iou: float = 0.5) -> dict[str, Any]:
    """CLEAR-MOT and identity scores through py-motmetrics: ``mota``, ``motp`` (1 - mean IoU
    distance), ``idf1``, ``id_switches``, ``tracks`` (distinct hypothesis ids), ``people``
    (distinct truth ids), ``mostly_tracked``, ``fragmentations``; and ``hota``, ``deta``,
    ``assa`` from :func:`hota_scores` (``None`` without TrackEval); all scores in percent.

    Raises:
        FootageError: py-motmetrics is not installed (the ``footage`` extra).
    """
    try:
        import motmetrics
    except ImportError as exc:  # pragma: no cover - depends on the extra
        raise FootageError("tracking scores need py-motmetrics: pip install "
                           "'attreid[footage]'") from exc
    acc = motmetrics.MOTAccumulator(auto_id=False)
    for frame in sorted(set(truth) | set(found)):
        gt = truth.get(frame, Detections())
        hyp = found.get(frame, Detections())
        distance = 1.0 - box_iou(gt.boxes, hyp.boxes)
        distance[distance > 1.0 - iou] = np.nan
        acc.update(gt.track_ids.tolist(), hyp.track_ids.tolist(), distance, frameid=frame)
    names = ["mota", "motp", "idf1", "num_switches", "mostly_tracked", "num_fragmentations",
             "num_unique_objects"]
    summary = motmetrics.metrics.create().compute(acc, metrics=names, name="all")
    row = summary.loc["all"]
    tracks = {int(t) for d in found.values() for t in d.track_ids}
    hota = hota_scores(truth, found) or {}
    return {"mota": 100.0 * float(row["mota"]), "motp": 1.0 - float(row["motp"]),
            "hota": hota.get("HOTA"), "deta": hota.get("DetA"), "assa": hota.get("AssA"),
            "idf1": 100.0 * float(row["idf1"]), "id_switches": int(row["num_switches"]),
            "mostly_tracked": int(row["mostly_tracked"]),
            "fragmentations": int(row["num_fragmentations"]), "tracks": len(tracks),
            "people": int(row["num_unique_objects"])}


def hota_scores(truth: dict[int, Detections], found: dict[int, Detections]
                ) -> dict[str, float] | None:
    """HOTA, DetA, AssA, LocA (percent, averaged over the IoU thresholds 0.05..0.95 as TrackEval
    reports them) through TrackEval's ``HOTA`` metric on box IoU; every frame of either side
    counts. ``None`` when TrackEval is not installed (``pip install --no-deps trackeval``)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it reports its optional datasets
            from trackeval.metrics import HOTA
    except ImportError:
        return None
    frames = sorted(set(truth) | set(found))
    empty = Detections()
    gts = [truth.get(f, empty) for f in frames]
    hyps = [found.get(f, empty) for f in frames]
    gt_index = _dense_ids(gts)
    hyp_index = _dense_ids(hyps)
    data = {"num_gt_dets": sum(len(d) for d in gts),
            "num_tracker_dets": sum(len(d) for d in hyps),
            "num_gt_ids": len(gt_index), "num_tracker_ids": len(hyp_index),
            "gt_ids": [np.array([gt_index[int(t)] for t in d.track_ids], int) for d in gts],
            "tracker_ids": [np.array([hyp_index[int(t)] for t in d.track_ids], int)
                            for d in hyps],
            "similarity_scores": [box_iou(g.boxes, h.boxes) for g, h in zip(gts, hyps)]}
    with contextlib.redirect_stdout(io.StringIO()):
        res = HOTA().eval_sequence(data)
    return {name: 100.0 * float(np.mean(res[name])) for name in ("HOTA", "DetA", "AssA", "LocA")}


def _dense_ids(frames: list[Detections]) -> dict[int, int]:
    """Track id -> 0..n-1 in order of first appearance (TrackEval wants dense ids)."""
    index: dict[int, int] = {}
    for d in frames:
        for t in d.track_ids:
            index.setdefault(int(t), len(index))
    return index
