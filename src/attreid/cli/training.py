"""``attreid train``: in this process, or with ``--nproc N`` in N processes that torchrun starts
(``-m attreid.cli train``) once the checks every rank would fail on have passed here."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from attreid.cli.base import _epoch_progress, _fail, console
from attreid.data.records import DataError

if TYPE_CHECKING:
    from attreid.config import Config


def train(
    config: str = typer.Option(..., "--config", "-c",
                               help="Preset name (seed, strong, cpu, demo) or a YAML file."),
    data: Path | None = typer.Option(None, "--data", help="Dataset folder (sets data.root)."),
    out: Path | None = typer.Option(None, "--out", help="Output folder (sets train.out)."),
    overrides: list[str] = typer.Option([], "--set", help="section.key=value, repeatable."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes (GPUs, or CPU workers with "
                              "gloo) for DistributedDataParallel; runs torchrun. data.p is the "
                              "global P: each process gets P/nproc identities x K."),
) -> None:
    """Train a joint attribute + re-ID model; checkpoints and metrics go to train.out."""
    from attreid.config import ConfigError, load_config
    from attreid.training.distributed import env_info
    from attreid.training.engine import train as run_training
    from attreid.training.step import NonFiniteLossError

    extra = [f"data.root={data}"] if data else []
    extra += [f"train.out={out}"] if out else []
    try:
        cfg = load_config(config, [*overrides, *extra])
    except ConfigError as exc:
        _fail(str(exc))
    if nproc > 1:
        _check_nproc(cfg, nproc)
        _torchrun(nproc, ["--config", config, *(f"--set={o}" for o in [*overrides, *extra]),
                          *(["--resume"] if resume else [])])
        return
    main = env_info().is_main
    if main:
        console.print(f"training {cfg.model.name}/{cfg.model.backbone} on {cfg.data.root} "
                      f"-> {cfg.train.out}")
    try:
        with _epoch_progress(cfg.optim.epochs, main) as on_step:
            result = run_training(cfg, resume=resume, log=console.print, on_step=on_step)
    except (DataError, ValueError, NonFiniteLossError, OSError) as exc:
        _fail(str(exc))
    if main:
        console.print(f"done: {result.epochs} epochs, best {result.best or '-'}; files in "
                      f"{result.out}")


def _check_nproc(cfg: Config, nproc: int) -> None:
    """Refuse, before starting any process, what every rank would fail on."""
    import torch

    from attreid.config import ConfigError
    from attreid.training.builders import build_data, check_bundle
    from attreid.training.checks import check_training_config
    from attreid.utils.backend import resolve_device

    try:
        check_training_config(cfg, nproc)  # its warnings are printed by rank 0
    except ConfigError as exc:
        _fail(f"--nproc {nproc}: {exc}")
    if resolve_device(cfg.train.device).type == "cuda" and torch.cuda.device_count() < nproc:
        _fail(f"--nproc {nproc}: one GPU per process, but {torch.cuda.device_count()} visible; "
              "use fewer processes or train.device=cpu (gloo)")
    try:  # the records only (no image decoded): what every rank would stop on
        check_bundle(cfg, build_data(cfg))
    except (DataError, ValueError) as exc:
        _fail(str(exc))


def _torchrun(nproc: int, args: list[str]) -> None:
    """Run ``attreid train ARGS`` in ``nproc`` processes with torchrun on this machine."""
    import subprocess
    import sys

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "attreid.cli", "train", *args]
    console.print(f"running {nproc} processes: {' '.join(command[1:])}", soft_wrap=True)
    code = subprocess.call(command)
    if code:
        _fail(f"distributed training failed (exit code {code}); the messages above say which "
              "rank stopped and why")
