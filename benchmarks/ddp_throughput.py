"""Training images/s of one process against N processes (DistributedDataParallel, gloo on CPU,
NCCL on GPU) with the same global batch, measured in the same run; writes the section
"Multi-process training" of benchmarks/RESULTS.md.

    python benchmarks/ddp_throughput.py [--data DIR] [--nproc 2] [--batches 40]

Without ``--data`` a synthetic dataset is made in a temporary folder. Each run trains 2 epochs of
``--batches`` global batches (P=16 x K=4, 128x64, MobileNetV2 from random weights, fp32); the
first epoch is a warm-up and the second epoch's images/s (summed over processes) is reported.
On a CPU, 1 process uses every core as threads and each of N processes gets cores/N threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, replace_section

OVERRIDES = ["model.backbone=mobilenet_v2", "model.weights=random", "data.height=128",
             "data.width=64", "data.p=16", "data.k=4", "data.cache=true", "data.workers=0",
             "optim.epochs=2", "optim.warmup_epochs=0", "train.amp=none",
             "train.channels_last=true", "train.eval_every=100", "train.tensorboard=false",
             "loss.triplet=batch_hard", "model.bnneck=true", "model.id_head=true",
             "loss.id_weight=1", "data.split=random", "data.val_ids=10"]


def run(data: Path, out: Path, nproc: int, batches: int, sync_bn: bool) -> dict:
    """Train with ``nproc`` processes; the second epoch's record of metrics.jsonl and the wall
    time."""
    threads = max(1, (os.cpu_count() or 1) // nproc)
    cmd = [str(Path(sys.executable).parent / "attreid"), "train", "-c", "demo", "--data",
           str(data), "--out", str(out), "--nproc", str(nproc),
           *(f"--set={o}" for o in OVERRIDES), f"--set=data.batches_per_epoch={batches}",
           f"--set=train.sync_bn={str(sync_bn).lower()}"]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"images_per_s": records[-1]["train"]["images_per_s"],
            "loss": records[-1]["train"]["loss"], "wall_s": time.perf_counter() - start,
            "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="dataset folder (default: synthetic)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            from attreid.data.synth import generate
            data = Path(tmp) / "synth"
            generate(data, ids=200, seed=0, layout="market")
        rows = []
        for nproc, sync_bn in ((1, False), (args.nproc, False), (args.nproc, True)):
            result = run(data, Path(tmp) / f"run{nproc}{sync_bn}", nproc, args.batches, sync_bn)
            rows.append((nproc, sync_bn, result))
            print(nproc, sync_bn, result, flush=True)
    base = rows[0][2]["images_per_s"]
    body = ["| processes | threads each | sync BN | images/s (epoch 2) | vs 1 process | "
            "epoch-2 loss |", "|---:|---:|---|---:|---:|---:|"]
    for nproc, sync_bn, r in rows:
        body.append(f"| {nproc} | {r['threads']} | {'yes' if sync_bn else 'no'} | "
                    f"{r['images_per_s']:.0f} | {r['images_per_s'] / base:.2f}x | "
                    f"{r['loss']:.4f} |")
    intro = (f"`python benchmarks/ddp_throughput.py --nproc {args.nproc} --batches "
             f"{args.batches}` on {machine()}; data: {args.data or 'synthetic, 200 identities'}. "
             "Global batch P=16 x K=4 at 128x64, MobileNetV2 (random weights), BNNeck + ID + "
             "batch-hard triplet, fp32, channels_last, images decoded once (data.cache). The "
             "second of two epochs is timed; images/s is summed over the processes.")
    replace_section("## Multi-process training", intro, "\n".join(body))


if __name__ == "__main__":
    main()
