"""Inference speed on this CPU: ONNX Runtime against PyTorch eager (fp32 and bf16), same run.

For each checkpoint (default: the `cpu` preset's Market-1501 run and the demo's convhead), the
model's forward pass on preprocessed random batches (images already resized and normalised, so
decoding is not measured), at batch 1 and batch 32:

    torch fp32    model(x) under inference_mode
    torch bf16    the same under CPU autocast to bfloat16
    onnxruntime   the `attreid export` file, CPUExecutionProvider, default threads, every
                  output fetched (embedding and the 12 attribute logits, as torch computes)
    auto          what `--backend auto` chose on this machine for this batch size
                  (attreid.inference.backends: verified candidates, the fastest measured),
                  through its predictor's ``embed_batch`` (outputs of every head, float32)

Images/s is the best of ``--repeats`` timed runs of ``--iters`` batches each (at least 640
images, so that batch 1 is timed over more than a millisecond per call), after warm-up.
The table also gives the max abs embedding difference of each method against torch fp32.
``--write`` replaces the "## Inference" section of RESULTS.md.

    python benchmarks/inference.py --write
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, machine, replace_section

from attreid.inference.backends import load_predictor
from attreid.inference.onnx import OnnxPredictor, export_onnx
from attreid.inference.predictor import Predictor

SECTION = "## Inference"
INTRO = ("ONNX Runtime against PyTorch eager (fp32, bf16) on the forward pass, "
         "`python benchmarks/inference.py --write`.")
ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", nargs="+", type=Path,
                        default=[ROOT / "runs/market_cpu60/best.pt",
                                 ROOT / "runs/demo/convhead/best.pt"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32, 128])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"update {RESULTS.name}")
    return parser.parse_args()


def best_rate(fn, batch: int, iters: int, repeats: int) -> float:
    fn()  # warm-up
    fn()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        best = max(best, batch * iters / (time.perf_counter() - start))
    return best


def measure(checkpoint: Path, batches: list[int], iters: int, repeats: int) -> list[str]:
    predictor = Predictor(checkpoint, device="cpu")
    model = predictor.model
    onnx = OnnxPredictor(export_onnx(checkpoint, Path(tempfile.mkdtemp()) / "m.onnx"))
    tc = predictor.transform_config
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, tc.height, tc.width)
        xn = x.numpy()

        def torch_fp32() -> np.ndarray:
            with torch.inference_mode():
                return model(x).embedding.numpy()

        def torch_bf16() -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x).embedding.float().numpy()

        def ort() -> np.ndarray:
            # every output, as the torch rows compute every head (fetching the embedding alone
            # lets ONNX Runtime skip the attribute heads)
            return onnx.session.run(None, {"images": xn})[0]

        chosen, choice = load_predictor(checkpoint, "auto", "cpu", batch_size=batch)

        def auto() -> np.ndarray:
            return chosen.embed_batch(x).embeddings.numpy()

        reference = torch_fp32()
        rates = {}
        for name, fn in (("torch fp32", torch_fp32), ("torch bf16", torch_bf16),
                         ("onnxruntime fp32", ort), (f"auto ({choice.backend})", auto)):
            rates[name] = best_rate(fn, batch, max(iters, 640 // batch), repeats)
            diff = float(np.abs(fn() - reference).max())
            rows.append(f"| {checkpoint.parent.name} ({model.config['backbone']}, "
                        f"{tc.height}x{tc.width}) | {batch} | {name} | {rates[name]:,.0f} | "
                        f"{rates[name] / rates['torch fp32']:.2f}x | {diff:.1e} |")
    return rows


def main() -> None:
    args = parse_args()
    os.environ["ATTREID_CACHE_DIR"] = tempfile.mkdtemp(prefix="inference_bench.")  # fresh choice
    header = ("| model | batch | method | images/s | vs torch fp32 | max abs diff |\n"
              "|---|---:|---|---:|---:|---:|")
    rows = []
    for checkpoint in args.checkpoints:
        if checkpoint.is_file():
            rows += measure(checkpoint, args.batches, args.iters, args.repeats)
        else:
            print(f"skipping {checkpoint}: not found")
    body = (f"### Forward pass ({datetime.date.today().isoformat()})\n\n"
            f"Machine: {machine()}.\n\n{header}\n" + "\n".join(rows))
    print(body)
    if args.write:
        replace_section(SECTION, INTRO, body)


if __name__ == "__main__":
    main()
