"""Person detection on real footage: PETS09-S2L1 (../shared/data/footage/pets09-s2l1), against
its MOTChallenge ground truth at IoU 0.5 (ground-truth rows with conf 0 dropped, as
``attreid.footage.mot.read_mot`` does; a detection on such a person counts as false).

Measured in one run, on the same decoded frames (decoding is not timed):

    baseline    OpenCV's HOG people detector on the whole frame enlarged 1.5x, OpenCV's own
                grouping, windows shrunk to the body (the off-the-shelf recipe)
    hog         attreid's default, ``build_detector("hog")``: HOG on enlarged patches around
                moving blobs, NMS with box voting, hits without foreground dropped, moving
                person-shaped blobs HOG missed added
    motion      ``build_detector("motion")``: foreground blobs alone

on vtest.mp4 (480 x 360, frames 1-400) and, for ``hog``, the img1/ frames (768 x 576, frames
1-300). Frames/s is wall time of ``detect`` alone, OpenCV at its default threads, on a machine
that other work shares: compare rows of one run. ``--write`` replaces the "## Measured" section
of docs/results/footage_detection.md (the tuning log there is kept). Without the data the script
says so and exits 0.

    python benchmarks/footage_detection.py --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PETS = ROOT.parent / "shared" / "data" / "footage" / "pets09-s2l1"
RESULTS = ROOT / "docs" / "results" / "footage_detection.md"
SECTION = "## Measured"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=400, help="video frames (1..N, max 400)")
    parser.add_argument("--img1-frames", type=int, default=300, help="768x576 frames (max 300)")
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    return parser.parse_args()


def cpu_line() -> str:
    """CPU model (lscpu, else /proc/cpuinfo, else platform), cores, OpenCV and Python."""
    import cv2

    model = ""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                      if line.startswith("Model name")), "")
    except OSError:
        pass
    if not model:
        from attreid.utils.backend import cpu_model
        model = cpu_model() or platform.processor() or platform.machine()
    return (f"{model}, nproc {os.cpu_count()}, OpenCV {cv2.__version__} "
            f"({cv2.getNumThreads()} threads), Python {platform.python_version()}, load "
            f"average {os.getloadavg()[0]:.2f} before the run")


def load(frames: int, img1: int) -> tuple[list[Any], list[Any], dict, dict]:
    from attreid.footage.mot import read_mot, split_ignored
    from attreid.footage.sources import SourceSpec, read_frames

    video = list(read_frames(SourceSpec(PETS / "vtest.mp4", "pets"), last=frames - 1))
    big = list(read_frames(SourceSpec(PETS / "img1", "pets", fps=7.0), last=img1 - 1))
    gt_video = split_ignored(read_mot(PETS / "gt" / "gt.txt", scale=0.625, keep_ignored=True))
    gt_big = split_ignored(read_mot(PETS / "gt" / "gt.txt", keep_ignored=True))

    def upto(frames: dict, count: int) -> dict:
        return {f: d for f, d in frames.items() if f <= count}

    return (video, big, (upto(gt_video[0], len(video)), upto(gt_video[1], len(video))),
            (upto(gt_big[0], len(big)), upto(gt_big[1], len(big))))


def measure(detector: Any, frames: list[Any], truth: dict, ignored: dict) -> dict[str, Any]:
    """Scores with the conf-0 rows dropped (a box on them counts as false) and, as
    MOTChallenge scores, as ignored regions (a box on them counts neither way)."""
    from attreid.footage.mot import detection_scores, drop_ignored

    detector.reset()
    found = {}
    start = time.perf_counter()
    for frame in frames:
        found[frame.index + 1] = detector.detect(frame)
    seconds = time.perf_counter() - start
    s = detection_scores(truth, found)
    fair = detection_scores(truth, drop_ignored(found, truth, ignored))
    return {"recall": s.recall, "precision": s.precision, "tp": s.true_positives,
            "fp": s.false_positives, "fn": s.missed, "fps": len(frames) / seconds,
            "precision_ignoring": fair.precision}


def main() -> int:
    args = parse_args()
    if not (PETS / "vtest.mp4").is_file() or not (PETS / "gt" / "gt.txt").is_file():
        print(f"footage_detection: {PETS} is absent; nothing measured")
        return 0
    sys.path.insert(0, str(ROOT / "src"))
    from attreid.footage.detect import build_detector

    machine = cpu_line()
    video, big, gt_video, gt_big = load(min(args.frames, 400), min(args.img1_frames, 300))
    baseline = build_detector("hog", use_motion=False, upscale=1.5, group_threshold=2,
                              score_threshold=0.0, min_height=0.0)
    runs = [("baseline: HOG on the 1.5x frame, body-fitted", baseline, video, gt_video),
            ("hog (default)", build_detector("hog"), video, gt_video),
            ("motion (default)", build_detector("motion"), video, gt_video),
            ("hog (default), 768x576 img1/", build_detector("hog"), big, gt_big)]
    rows = []
    for name, detector, frames, (truth, ignored) in runs:
        r = measure(detector, frames, truth, ignored)
        size = f"{frames[0].size[0]}x{frames[0].size[1]}"
        rows.append(f"| {name} | {size} | {len(frames)} | {r['recall']:.3f} | "
                    f"{r['precision']:.3f} | {r['precision_ignoring']:.3f} | {r['tp']} | "
                    f"{r['fp']} | {r['fn']} | {r['fps']:.1f} |")
        print(rows[-1], flush=True)
    base_fps = float(rows[0].split("|")[-2])
    ours_fps = float(rows[1].split("|")[-2])
    body = "\n".join([
        f"### {datetime.date.today().isoformat()}", "",
        f"- machine: {machine}",
        "- data: PETS09-S2L1 View_001, ground truth frames 1..400 (conf 0 rows dropped), "
        "IoU 0.5, one-to-one matching per frame (`attreid.footage.mot.detection_scores`)",
        f"- default HOG against the baseline: {ours_fps / base_fps:.1f}x the frames/s", "",
        "- precision (ignoring): boxes on the ground truth's conf-0 people (ignored regions) "
        "counted neither way, as MOTChallenge's evaluation does; TP/FP/FN count them as false",
        "",
        "| detector | frame | frames | recall | precision | precision (ignoring) | TP | FP | FN "
        "| frames/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", *rows])
    print(body)
    if args.write:
        write_section(body)
    return 0


def write_section(body: str) -> None:
    """Replace the "## Measured" section of the results file (created when missing), keeping
    the other sections; written atomically."""
    from attreid.utils.files import atomic_write_text

    text = RESULTS.read_text() if RESULTS.exists() else "# Footage: person detection\n"
    head, found, rest = text.partition(SECTION)
    nxt = rest.find("\n## ") if found else -1
    after = rest[nxt + 1:] if nxt >= 0 else ""
    intro = "`python benchmarks/footage_detection.py --write` (see its docstring)."
    new = f"{SECTION}\n\n{intro}\n\n{body.strip()}\n"
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, head.rstrip("\n") + "\n\n" + new + ("\n" + after if after else ""))


if __name__ == "__main__":
    raise SystemExit(main())
