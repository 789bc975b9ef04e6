"""Distributed training steps equal single-process steps, checked in float64.

The engine's own epoch (:func:`attreid.training.engine._run_epoch`: learning rate, the rank's share of
every PK batch, :func:`attreid.training.step.train_step` with DDP, the gathered triplet loss,
:class:`~attreid.training.distributed.GlobalBatchNorm`, ``average_gradients`` of the loss's weights and
the SGD step) runs twice on the same data from the same weights: once in one process on the
whole P x K batch, once in 2 gloo processes on their halves. In float64 the two differ only by
the order of additions, so after 4 steps every parameter, batch-norm statistic and loss weight
of every rank equals the single-process one to ~1e-11 (measured below); a rank-dependent
learning rate or a gradient averaged with the wrong weight moves them by 10 % or more.

The only change to the engine is its float32 cast of the model's output (``to_float``, meant
for autocast), replaced by the identity: the model is built in float64
(``torch.set_default_dtype``) and the data loader's ToTensor follows the default dtype.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attreid.config import load_config
from attreid.data.synth import generate
from attreid.training import engine
from attreid.training import step as training_step
from attreid.training.distributed import DistInfo, GlobalBatchNorm

# Deterministic batches (no augmentation, no dropout, decoded per step: data.cache off so the
# images come from torchvision's ToTensor in the default dtype), SGD with momentum (plain
# gradient scale matters: Adam would hide a gradient scaled by a constant), a constant learning
# rate, BN synchronised across ranks, 2 epochs x 2 steps, no validation.
OVERRIDES = ["data.p=4", "data.k=2", "data.batches_per_epoch=2", "data.workers=0",
             "data.cache=false", "data.transform=none", "data.erasing_p=0", "optim.name=sgd",
             "optim.lr=0.01", "optim.weight_decay=5e-4", "optim.scheduler=none",
             "optim.warmup_epochs=0", "optim.epochs=100", "train.amp=none",
             "train.channels_last=false", "train.eval_every=100", "train.tensorboard=false",
             "train.sync_bn=true", "train.device=cpu", "model.bnneck=true", "model.id_head=true",
             "loss.id_weight=1", "loss.triplet=batch_all", "loss.soft_margin=true"]
EPOCHS = 2
WEIGHTINGS = {"fixed": ["loss.weighting=fixed", "loss.reid_weight=0.5", "loss.attr_weight=1"],
              "uncertainty": ["loss.weighting=uncertainty"]}
# Relative tolerances (max |a - b| / max |b| per tensor) on every tensor of the model's and
# the loss's state, on each tensor's change over the 4 steps, and on the epochs' loss means.
# Measured on an AMD EPYC, fixed and uncertainty weighting: <= 7.8e-12 on the state, <= 1.3e-11
# on the change, <= 1.1e-12 on the losses; the same with ONEDNN_MAX_CPU_ISA=AVX2 and
# MKL_ENABLE_INSTRUCTIONS=SSE4_2 (float64 takes neither path), 7.2e-12 / 1.2e-11 / 7.6e-13 with
# ATEN_CPU_CAPABILITY=avx2. (Not 1e-16: batch norm over 4-image shares with 2x1 maps in the last
# stage amplifies the rounding, as in float32 in test_distributed.py.) The tolerances are ~100x
# that; each mutation listed in the test moves the state by more than 0.1 relative.
STATE_RTOL = 1e-9
CHANGE_RTOL = 1e-9
LOSS_RTOL = 1e-10


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp64") / "market"
    generate(root, ids=20, seed=11, layout="market")
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(rank: int, world: int, port: int, root: str, weighting: str, out_dir: str) -> dict:
    """EPOCHS epochs of the engine in float64 as rank ``rank`` of ``world``; the initial and
    final state of model and loss, and each epoch's training record."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    dtype, cast = torch.get_default_dtype(), training_step.to_float
    torch.set_default_dtype(torch.float64)
    training_step.to_float = lambda output: output  # keep the float64 output (see the docstring)
    try:
        cfg = load_config("demo", [f"data.root={root}", f"train.out={out_dir}", *OVERRIDES,
                                   *WEIGHTINGS[weighting]])
        bundle = engine.build_data(cfg)
        info = DistInfo(rank, world)
        parts = engine.setup(cfg, bundle, info)
        if world > 1:  # the synchronised batch norm is the one under test
            assert any(isinstance(m, GlobalBatchNorm) for m in parts.model.modules())
        before = _state(parts)
        records = [engine._run_epoch(cfg, parts, bundle, epoch, Path(out_dir), None)["train"]
                   for epoch in range(EPOCHS)]
        return {"before": before, "after": _state(parts), "records": records}
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
        training_step.to_float = cast
        if world > 1:
            dist.destroy_process_group()


def _state(parts) -> dict[str, torch.Tensor]:
    state = {f"model.{k}": v.detach().clone() for k, v in parts.model.state_dict().items()}
    state.update({f"loss.{k}": v.detach().clone()
                  for k, v in parts.criterion.state_dict().items()})
    return state


def _worker(rank: int, world: int, port: int, root: str, weighting: str, out_dir: str,
            results: str) -> None:
    # through a file, not a Manager dict: a Manager process sending tensors by file descriptor
    # hung once in CI (multiprocessing's resource sharer, under a loaded machine)
    torch.save(_run(rank, world, port, root, weighting, out_dir), f"{results}/rank{rank}.pt")


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale else (a - b).abs().max().item()


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_two_ranks_take_the_single_process_steps_in_float64(root, tmp_path, weighting):
    """After 4 steps every rank's weights, batch-norm running statistics, loss weights (s0, s1
    with uncertainty weighting) and per-epoch loss means equal one process's on the whole batch.

    Mutations that turn it red (each a temporary edit of src/): the learning rate scaled by the
    rank in ``engine._run_epoch`` (``* (1 + parts.info.rank)``); ``average_gradients`` dividing
    by ``world_size + 1`` (uncertainty); ``backward`` not calling ``average_gradients``
    (uncertainty: s0/s1 then follow each rank's own loss); ``_Gather.backward`` without its
    all-reduce (triplet gradients of the other rank's rows lost); ``GlobalBatchNorm`` normalising
    with the rank's own statistics; ``RankBatches`` giving both ranks the first half."""
    reference = _run(0, 1, 0, str(root), weighting, str(tmp_path / "one"))
    results = tmp_path / "results"
    results.mkdir()
    mp.spawn(_worker, args=(2, _free_port(), str(root), weighting, str(tmp_path / "two"),
                            str(results)), nprocs=2)
    out = {rank: torch.load(results / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)}
    ref_before, ref_after = reference["before"], reference["after"]
    assert {k for k in ref_after if k.startswith("loss.")} == \
        ({"loss.weighting.s0", "loss.weighting.s1"} if weighting == "uncertainty" else set())
    unchanged = set()
    for rank in (0, 1):
        mine = out[rank]
        assert mine["after"].keys() == ref_after.keys()
        for name, value in mine["before"].items():  # the same start (seeded build, broadcast)
            assert torch.equal(value, ref_before[name]), (rank, name)
        for name, value in mine["after"].items():
            ref = ref_after[name]
            assert value.dtype == ref.dtype, name
            if not ref.is_floating_point():  # num_batches_tracked
                assert torch.equal(value, ref), (rank, name)
                continue
            assert ref.dtype == torch.float64, name
            assert _relative(value, ref) <= STATE_RTOL, (rank, name, _relative(value, ref))
            step, ref_step = value - ref_before[name], ref - ref_before[name]
            if ref_step.abs().max() == 0:
                unchanged.add(name)
            else:
                assert _relative(step, ref_step) <= CHANGE_RTOL, \
                    (rank, name, _relative(step, ref_step))
        for record, ref in zip(mine["records"], reference["records"], strict=True):
            for term in ("loss", "triplet", "id", "attr", "reid"):
                assert record[term] == pytest.approx(ref[term], rel=LOSS_RTOL, abs=0), term
    # every weight and statistic moved (the change was compared), but BNNeck's frozen bias
    assert unchanged == {"model.bnneck.bias"}
