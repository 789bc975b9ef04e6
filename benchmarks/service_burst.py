"""Image searches through the HTTP service under a burst of concurrent clients: one forward pass
per request (``max_batch`` 1, the service before micro-batching) against crops of concurrent
requests sharing passes (``max_batch`` 16), same run; writes the section "Service under load" of
benchmarks/RESULTS.md.

    python benchmarks/service_burst.py [--requests 1000] [--clients 50] [--write]

The model is the ``cpu`` preset's MobileNetV2 at 128x64 (random weights: speed does not depend
on them), the gallery 2,000 synthetic crops, the queries 1,000 uploads of 100 distinct crops.
The server runs in this process (uvicorn on loopback), the clients in a separate process.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import machine, replace_section
from search import http_queries, percentile

from attreid.config import load_config, to_dict
from attreid.data.synth import generate
from attreid.inference.predictor import Predictor
from attreid.models import build_model
from attreid.search import GallerySearch, build_index
from attreid.training.builders import model_kwargs
from attreid.utils.checkpoint import save_checkpoint

SECTION = "## Service under load"


def make_checkpoint(path: Path) -> Path:
    """The ``cpu`` preset's model with random weights, saved as a checkpoint."""
    cfg = load_config("cpu", ["model.weights=random"])
    model = build_model(**model_kwargs(cfg, num_identities=751))
    save_checkpoint(path, {"model": model.state_dict(), "config": to_dict(cfg),
                           "model_config": model.config})
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--write", action="store_true", help="update benchmarks/RESULTS.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate(root / "synth", ids=220, seed=0, layout="market")
        crops = sorted((root / "synth" / "bounding_box_test").glob("*.jpg"))
        queries = sorted((root / "synth" / "query").glob("*.jpg"))[:100]
        predictor = Predictor(make_checkpoint(root / "model.pt"), device="cpu")
        build_index(predictor, root / "synth" / "bounding_box_test", root / "index")
        search = GallerySearch.open(root / "index")
        load = [queries[i % len(queries)] for i in range(args.requests)]
        rows = []
        for max_batch in (1, 16):
            times, wall = http_queries(search, load, 10, args.clients, max_batch)
            rows.append((max_batch, times, wall))
            print(max_batch, f"p50 {percentile(times, 50):.0f} ms p95 "
                  f"{percentile(times, 95):.0f} ms, {len(times) / wall:.1f} req/s", flush=True)
    base_p95 = percentile(rows[0][1], 95)
    body = ["| max_batch | p50 ms | p95 ms | max ms | requests/s | p95 vs one pass per "
            "request |", "|---:|---:|---:|---:|---:|---:|"]
    for max_batch, times, wall in rows:
        body.append(f"| {max_batch} | {percentile(times, 50):.0f} | "
                    f"{percentile(times, 95):.0f} | {1000 * max(times):.0f} | "
                    f"{len(times) / wall:.1f} | {percentile(times, 95) / base_p95:.2f}x |")
    intro = (f"`python benchmarks/service_burst.py --requests {args.requests} --clients "
             f"{args.clients} --write` on {machine()}: {args.requests} image searches (k=10) "
             f"from {args.clients} concurrent clients (a separate process) against "
             f"`attreid serve`'s app on loopback; gallery {len(crops)} synthetic crops, model "
             "MobileNetV2 128x64 (`cpu` preset, random weights), flat FAISS index. "
             "`max_batch` 1 runs one forward pass per request; 16 lets the crops of requests "
             "waiting at the same time share a pass (`attreid serve --max-batch`).")
    print("\n".join(body))
    if args.write:
        replace_section(SECTION, intro, "\n".join(body))


if __name__ == "__main__":
    main()
