"""The built-in demo: synthesise a dataset, train the three variants briefly, evaluate them and
write the study-style table (``results.md``, ``results.json``)."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from attreid.config import Config, load_config, with_updates
from attreid.data.synth import generate
from attreid.evaluation.report import markdown_table
from attreid.training.checks import check_training_config
from attreid.training.engine import train
from attreid.utils.files import atomic_write_text

VARIANTS = ("resnet", "convhead", "attention")


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its files, the metrics per variant and the wall time."""

    out: Path
    results: dict[str, dict[str, Any]]
    seconds: float


def demo_config(data: Path, out: Path, variant: str, epochs: int | None = None) -> Config:
    """The ``demo`` preset for one variant on the synthetic data in ``data``."""
    cfg = load_config("demo")
    optim = {"epochs": epochs} if epochs is not None else {}
    return with_updates(cfg, data={"root": str(data)}, model={"name": variant},
                        train={"out": str(out / variant)}, optim=optim)


def run_demo(out: Path, ids: int = 200, seed: int = 0, epochs: int | None = None,
             variants: tuple[str, ...] = VARIANTS, log: Callable[[str], None] = print,
             on_step: Callable[..., None] | None = None) -> DemoResult:
    """Synthesise ``ids`` identities into ``out/data``, train and validate each variant."""
    start = time.perf_counter()
    data = out / "data"
    for variant in variants:  # refuse a bad setting before anything is written
        check_training_config(demo_config(data, out, variant, epochs))
    partial = out / "data.partial"
    shutil.rmtree(partial, ignore_errors=True)
    info = generate(partial, ids=ids, seed=seed, layout="market")  # raises before writing
    shutil.rmtree(data, ignore_errors=True)  # the previous demo's data, replaced
    partial.rename(data)
    log(f"synthetic dataset: {info.train_ids} train / {info.test_ids} test identities, "
        f"{sum(info.images.values())} images in {data}")
    results = {}
    for variant in variants:
        log(f"training {variant} ...")
        cfg = demo_config(data, out, variant, epochs)
        result = train(cfg, log=log, on_step=on_step)
        results[variant] = result.history[-1]["val"]
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    atomic_write_text(out / "results.md", markdown_table(results))
    return DemoResult(out=out, results=results, seconds=time.perf_counter() - start)
