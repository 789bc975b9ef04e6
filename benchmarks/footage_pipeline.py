"""The whole footage pipeline (decode, detect, track, [embed, index]) on real and synthetic
footage, against the off-the-shelf baseline in the same run.

PETS09-S2L1 (../shared/data/footage/pets09-s2l1), vtest.mp4 frames 1..400 (480 x 360) and
img1/ frames 1..300 (768 x 576), scored against its MOTChallenge ground truth by py-motmetrics
(conf-0 rows are ignored regions: boxes on them count neither way, as MOTChallenge scores):

    baseline    HOG on the whole frame enlarged 1.5x, body-fitted, then attreid's tracker
                without appearance, recovery or track filtering (a plain ByteTrack-style
                tracker)
    default     ``attreid ingest``'s defaults: motion-focused HOG, the tracker with OC-SORT
                recovery, tracklets of at least 15 frames; with ``--pets-checkpoint`` also
                attreid's embeddings in the tracker and the crops written into an index
    library     the same run with deep-sort-realtime's DeepSort (MIT; Wojke et al. 2017) in
                place of attreid's tracker: the same detections, the same embeddings (given
                to DeepSort as its ``embeds``), the same tracklet stage and index; DeepSort's
                own defaults but for its age limit and appearance gate, set to attreid's
                (4 s, cosine distance 0.35)

Scores: recall/precision at IoU 0.5, MOTA, IDF1 and id switches by py-motmetrics, HOTA by
TrackEval (``attreid.footage.mot``).

Synthetic footage (``attreid.data.footage_synth.make_footage``, 3 cameras x 20 s, 6 people) is
ingested with the motion detector and ``--checkpoint`` (e.g. the demo's
``runs/demo/resnet/best.pt``, trained on the same generator's people); each tracklet with a true
identity is the query against the tracklets of the other cameras (``attreid.footage.scores``).

Frames/s is wall time from the first decoded frame to the index written, on a machine that other
work may share: compare rows of one run. ``--write`` replaces the "## Measured" section of
docs/results/footage_pipeline.md. Without ../shared the PETS part says so and is skipped.

    python benchmarks/footage_pipeline.py --checkpoint runs/demo/resnet/best.pt --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PETS = ROOT.parent / "shared" / "data" / "footage" / "pets09-s2l1"
RESULTS = ROOT / "docs" / "results" / "footage_pipeline.md"
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "src"))

from footage_detection import cpu_line  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="model for the synthetic footage")
    parser.add_argument("--pets-checkpoint", type=Path, help="re-ID model for PETS (e.g. "
                        "trained on Market-1501); without it PETS is tracked by motion only")
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    return parser.parse_args()


def pets_run(name: str, detector: Any, video: Path, fps: float | None, last: int,
             settings: Any, predictor: Any, gt_scale: float) -> str:
    from attreid.footage.ingest import ingest
    from attreid.footage.mot import (
        detection_scores,
        drop_ignored,
        read_mot,
        split_ignored,
        tracking_scores,
    )
    from attreid.footage.sources import SourceSpec

    spec = SourceSpec(video, "1", 0.0, fps)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "index" if predictor is not None else None
        start = time.perf_counter()
        report = ingest([spec], lambda s: detector, predictor, out, settings, name,
                        Path(tmp) / "tracks")[0]
        seconds = time.perf_counter() - start
        if report.error:
            raise SystemExit(f"{name}: {report.error}")
        found = read_mot(Path(tmp) / "tracks" / "1.txt")
    every = read_mot(PETS / "gt" / "gt.txt", scale=gt_scale, keep_ignored=True)
    truth, ignored = split_ignored({f: d for f, d in every.items() if f <= last + 1})
    found = drop_ignored(found, truth, ignored)
    det, s = detection_scores(truth, found), tracking_scores(truth, found)
    size = "480x360" if video.suffix else "768x576"
    hota = "-" if s["hota"] is None else f"{s['hota']:.1f}"
    return (f"| {name} | {size} | {report.frames} | {det.recall:.3f} | {det.precision:.3f} | "
            f"{s['mota']:.1f} | {s['idf1']:.1f} | {hota} | {s['id_switches']} | "
            f"{s['tracks']} | {s['people']} | {report.frames / seconds:.1f} |")


class LibraryTracker:
    """deep-sort-realtime's ``DeepSort`` behind attreid's tracker interface (``update(found,
    frame) -> the detections of confirmed tracks matched in this frame, with their ids``), fed
    attreid's detections and embeddings; a detection without an embedding (too small to embed)
    gets a random unit vector, so only its motion can match it."""

    def __init__(self, settings: Any, fps: float = 7.0) -> None:
        import numpy as np
        from deep_sort_realtime.deepsort_tracker import DeepSort

        self.settings = settings
        self.rng = np.random.default_rng(0)
        self.tracker = DeepSort(max_age=max(1, round(settings.max_lost_s * fps)),
                                max_cosine_distance=settings.max_appearance, embedder=None)

    def update(self, found: Any, frame: Any) -> Any:
        """``frame`` is not used: DeepSort counts frames, and PETS09-S2L1 has 7 per second."""
        import numpy as np

        keep = found.scores >= self.settings.low_score
        dets = found.subset(keep)
        vectors = (dets.embeddings if dets.embeddings is not None
                   else np.zeros((len(dets), 1), np.float32)).astype(np.float64)
        blank = np.linalg.norm(vectors, axis=1) == 0
        if blank.any():
            noise = self.rng.normal(size=(int(blank.sum()), vectors.shape[1]))
            vectors[blank] = noise / np.linalg.norm(noise, axis=1, keepdims=True)
        raw = [([float(x1), float(y1), float(x2 - x1), float(y2 - y1)], float(c), "person")
               for (x1, y1, x2, y2), c in zip(dets.boxes, dets.scores)]
        tracks = self.tracker.update_tracks(raw, embeds=list(vectors),
                                            others=list(range(len(dets))))
        rows, ids = [], []
        for track in tracks:
            if track.is_confirmed() and track.time_since_update == 0:
                rows.append(int(track.get_det_supplementary()))
                ids.append(int(track.track_id))
        out = dets.subset(np.array(rows, int))
        out.track_ids = np.array(ids, np.int64)
        return out


def pets_library_run(name: str, video: Path, fps: float | None, last: int, predictor: Any,
                     gt_scale: float) -> str:
    """:func:`pets_run` of the default detector with :class:`LibraryTracker` as the tracker."""
    from unittest import mock

    from attreid.footage import pipeline
    from attreid.footage.detect import build_detector

    with mock.patch.object(pipeline, "Tracker", LibraryTracker):
        return pets_run(name, build_detector("hog"), video, fps, last,
                        pipeline.PipelineSettings(last=last), predictor, gt_scale)


def pets(pets_checkpoint: Path | None) -> list[str]:
    from attreid.footage.detect import build_detector
    from attreid.footage.pipeline import PipelineSettings
    from attreid.footage.track import TrackerSettings
    from attreid.footage.tracklets import TrackletSettings

    predictor = _predictor(pets_checkpoint)
    plain = PipelineSettings(last=399, tracker=replace(TrackerSettings(), recover_heights=0.0),
                             tracklets=replace(TrackletSettings(), min_observations=1,
                                               split_distance=None))
    baseline = build_detector("hog", use_motion=False, upscale=1.5, group_threshold=2,
                              score_threshold=0.0, min_height=0.0)
    video = PETS / "vtest.mp4"
    rows = [pets_run("baseline: HOG x1.5 + plain tracker", baseline, video, None, 399, plain,
                     None, 0.625),
            pets_run("default, motion only", build_detector("hog"), video, None, 399,
                     PipelineSettings(last=399), None, 0.625)]
    if predictor is not None:
        rows.append(pets_run("default + embeddings + index", build_detector("hog"), video,
                             None, 399, PipelineSettings(last=399), predictor, 0.625))
        rows.append(pets_library_run("library: DeepSort (deep-sort-realtime) + embeddings + "
                                     "index", video, None, 399, predictor, 0.625))
    rows.append(pets_run("default, motion only", build_detector("hog"), PETS / "img1", 7.0,
                         299, PipelineSettings(last=299), None, 1.0))
    if predictor is not None:
        rows.append(pets_run("default + embeddings + index", build_detector("hog"),
                             PETS / "img1", 7.0, 299, PipelineSettings(last=299), predictor,
                             1.0))
    return rows


def _predictor(checkpoint: Path | None) -> Any:
    if checkpoint is None:
        return None
    from attreid.inference.predictor import Predictor

    return Predictor(checkpoint, device="cpu", batch_size=32)


def synthetic(checkpoint: Path) -> list[str]:
    from attreid.data.footage_synth import make_footage
    from attreid.footage.detect import build_detector
    from attreid.footage.ingest import ingest
    from attreid.footage.mot import read_mot, tracking_scores
    from attreid.footage.pipeline import PipelineSettings
    from attreid.footage.scores import cross_camera_scores, indexed_tracklets, true_identity
    from attreid.footage.sources import read_manifest
    from attreid.search.index import GalleryIndex

    with tempfile.TemporaryDirectory() as tmp:
        info = make_footage(Path(tmp) / "scene", cameras=3, people=6, seconds=20, seed=0)
        predictor = _predictor(checkpoint)
        start = time.perf_counter()
        reports = ingest(read_manifest(info.manifest), lambda s: build_detector("motion"),
                         predictor, Path(tmp) / "index", PipelineSettings(), "motion",
                         Path(tmp) / "tracks")
        seconds = time.perf_counter() - start
        truth = {r.camera: read_mot(info.out / f"cam{r.camera}_gt.txt") for r in reports}
        tracks = [tracking_scores(truth[r.camera], read_mot(Path(tmp) / "tracks" /
                                                             f"{r.camera}.txt"))
                  for r in reports]
        index = GalleryIndex.open(Path(tmp) / "index")
        tracklets = indexed_tracklets(index)
        ids = [true_identity(t.frames, t.boxes, truth[t.camera]) for t in tracklets]
        result = cross_camera_scores(tracklets, ids, index.metric)
    frames = sum(r.frames for r in reports)
    motas = ", ".join(f"{t['mota']:.1f}" for t in tracks)
    switches = ", ".join(str(t["id_switches"]) for t in tracks)
    return [f"- {len(reports)} cameras, {frames} frames (320x240) at {frames / seconds:.1f} "
            f"frames/s with embedding and indexing; MOTA {motas}, id switches {switches} "
            "per camera",
            f"- {len(tracklets)} tracklets ({sum(i == 0 for i in ids)} false); cross-camera "
            f"retrieval of tracklets: mAP {100 * result.mAP:.1f}, rank-1 "
            f"{100 * result.cmc[0]:.1f} over {result.num_valid_queries} queries "
            f"(model: {checkpoint})"]


def main() -> int:
    args = parse_args()
    lines = [f"### {datetime.date.today().isoformat()}", "", f"- machine: {cpu_line()}", ""]
    if (PETS / "vtest.mp4").is_file():
        lines += ["PETS09-S2L1 (conf-0 ground truth as ignored regions; the target: recall "
                  ">= 0.85 at precision >= 0.90, MOTA >= 75, IDF1 >= 70, <= 10 id switches, "
                  "<= 15 tracks, >= 10 frames/s at 480x360 and >= 4 at 768x576):", "",
                  "| run | frame | frames | recall | precision | MOTA | IDF1 | HOTA | id sw. "
                  "| tracks | people | frames/s |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in pets(args.pets_checkpoint):
            print(row, flush=True)
            lines.append(row)
        lines.append("")
    else:
        print(f"footage_pipeline: {PETS} is absent; PETS skipped")
    if args.checkpoint is not None:
        lines += ["Synthetic footage (3 cameras x 20 s at 10 frames/s, 6 people, seed 0):", ""]
        lines += synthetic(args.checkpoint)
    body = "\n".join(lines)
    print(body)
    if args.write:
        from attreid.utils.files import atomic_write_text

        text = RESULTS.read_text() if RESULTS.exists() else HEAD
        head = text.split("## Measured")[0].rstrip("\n")
        atomic_write_text(RESULTS, f"{head}\n\n## Measured\n\n{body}\n")
    return 0


HEAD = """# Footage: the whole pipeline (issue 27)

`python benchmarks/footage_pipeline.py [--checkpoint CKPT] [--pets-checkpoint CKPT] --write`
(see its docstring). The detector alone: [footage_detection.md](footage_detection.md).
"""


if __name__ == "__main__":
    raise SystemExit(main())
