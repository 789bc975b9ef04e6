"""Multi-process training with torch.distributed: process-group set-up from torchrun's
environment, the per-rank share of a PK batch, collectives for losses and metrics, and a
batch norm synchronised across ranks that also works on the CPU (gloo).

How a distributed run reproduces a single-process one with the same global batch:

* **Batches.** ``data.p`` and ``data.k`` keep their meaning for the *global* batch. Every step the
  PK sampler draws the same ``P x K`` batch on every rank; rank ``r`` of ``W`` takes identities
  ``[r * P / W, (r + 1) * P / W)`` of it, so the ranks hold disjoint identities, ``P / W x K``
  images each, and together exactly the single-process batch (``P`` must be divisible by ``W``).
* **Triplet loss.** The embeddings and labels of all ranks are gathered (with gradient) before
  mining, so hard positives and negatives come from the global batch as in one process.
* **Other terms** (ID and attribute cross-entropy) are means over the rank's images; DDP averages
  the gradients, which gives the global mean whenever every rank has the same number of known
  labels (always true for P x K batches with identity-level attributes).
* **Batch norm.** Without ``train.sync_bn`` each rank normalises with its own ``P / W x K``
  images (the usual DDP behaviour, slightly different statistics); with it the statistics are
  those of the global batch: torch's SyncBatchNorm on GPU, :class:`GlobalBatchNorm` on CPU.
* **Validation.** Every rank embeds every W-th image; rank 0 scores the gathered features.
* **Not shared:** the batch augmentation draws its randomness per rank, and dropout masks differ,
  so with augmentation the runs agree in distribution, not to the last bit.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank, number of processes and local (per-node) rank."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, logs and metrics."""
        return self.rank == 0


SINGLE = DistInfo()


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``); a single process when they are absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init(device_type: str, timeout_min: float = 60.0) -> DistInfo:
    """Join the process group of a torchrun job (NCCL on CUDA, gloo otherwise); a no-op for a
    single process. ``timeout_min`` bounds how long ranks wait for each other (rank 0 scores
    the validation and writes checkpoints while the others wait)."""
    info = env_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_min))
    return info


def shutdown() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


class RankBatches:
    """This rank's share of every batch of a PK batch sampler.

    Args:
        batches: yields global batches of ``P * K`` dataset indices, the ``K`` images of an
            identity contiguous (:class:`~attreid.data.sampler.PKSampler`).
        p, k: the global batch's identities and images per identity.
        info: this process's rank and the number of ranks; ``p % world_size == 0``.
    """

    def __init__(self, batches: Iterable[list[int]], p: int, k: int, info: DistInfo) -> None:
        if p % info.world_size:
            raise ValueError(f"data.p={p} identities per batch cannot be split over "
                             f"{info.world_size} processes: make it a multiple of "
                             f"{info.world_size}")
        self.batches, self.info = batches, info
        share = p // info.world_size * k
        self.start, self.stop = info.rank * share, (info.rank + 1) * share

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            yield batch[self.start:self.stop]


class _Gather(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the gradient over the ranks (one all-reduce)
    and returns this rank's rows. Every rank passes the same number of rows (a PK share)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (W * B, ...)
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) of every rank in rank order -> (W * B, ...). The gradient of
    the result flows back to each rank's ``x`` (summed over the ranks that used it)."""
    if not info.enabled:
        return x
    return _Gather.apply(x)


def mean_over_ranks(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """The mean of each value over the ranks (the values themselves for one process)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / info.world_size for k, v in zip(keys, t)}


def sum_over_ranks(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t)


def from_rank0(value: float, info: DistInfo) -> float:
    """Rank 0's ``value`` on every rank (a decision one rank made from its own measurement)."""
    return sum_over_ranks(value if info.is_main else 0.0, info)


def all_true(flag: bool, info: DistInfo) -> bool:
    """True when ``flag`` holds on every rank."""
    if not info.enabled:
        return flag
    t = torch.tensor([0 if flag else 1], dtype=torch.int32)
    dist.all_reduce(t)
    return int(t) == 0


def all_true_tensor(flag: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """``flag`` (a 0-d bool tensor) and-ed over every rank, as a tensor on its own device: the
    collective is queued, the host does not wait for it."""
    if not info.enabled:
        return flag
    t = flag.to(torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return t.bool()


def average_gradients(params: Iterable[nn.Parameter], info: DistInfo) -> None:
    """Average the gradients of parameters that DDP does not manage (the loss's weights)."""
    if not info.enabled:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= info.world_size


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the batch of all ranks, for any device
    and backend (torch's SyncBatchNorm needs a GPU). Sums and sums of squares per channel are
    all-reduced with gradient; in eval mode, or alone, it is plain batch norm. Its parameters
    and buffers are those of ``nn.BatchNorm*d``, so checkpoints load into the plain model."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected input of shape (B, C, ...), got {tuple(input.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, channels) + (1,) * (x.dim() - 2)
        # per-rank count, mean and sum of squared deviations, merged exactly (Chan et al.):
        # stable where the mean is large against the spread, unlike E[x^2] - E[x]^2
        local_mean = x.mean(dims)  # (C,)
        m2 = ((x - local_mean.view(shape)) ** 2).sum(dims)  # (C,)
        count = x.new_tensor([x.numel() / channels])
        stats = _Gather.apply(torch.cat([local_mean, m2, count])[None])  # (W, 2C+1)
        counts, means = stats[:, -1:], stats[:, :channels]  # (W, 1), (W, C)
        n = counts.sum()
        mean = (counts * means).sum(0) / n  # (C,)
        var = (stats[:, channels:-1].sum(0) + (counts * (means - mean) ** 2).sum(0)) / n
        self._update_running(mean.detach(), var.detach() * n / (n - 1).clamp_min(1.0))
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, unbiased_var: torch.Tensor) -> None:
        if not self.track_running_stats or self.running_mean is None:
            return
        self.num_batches_tracked += 1
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.mul_(1 - m).add_(mean, alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased_var, alpha=m)


def convert_sync_batchnorm(module: nn.Module, device_type: str) -> nn.Module:
    """Every batch norm of ``module`` synchronised across ranks: torch's SyncBatchNorm on CUDA,
    :class:`GlobalBatchNorm` elsewhere (same parameters and buffers, values kept)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
            not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        tensors = [*module.parameters(), *module.buffers()]
        new = new.to(tensors[0].device) if tensors else new
        new.load_state_dict(module.state_dict())
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child, device_type))
    return module


def merge_strided(parts: list[torch.Tensor]) -> torch.Tensor:
    """Undo a strided split: ``parts[r]`` holds rows ``r, r + W, r + 2W, ...`` of a tensor
    (each (n_r, ...)); returns the (sum n_r, ...) tensor in the original row order."""
    total = sum(len(p) for p in parts)
    out = parts[0].new_empty((total, *parts[0].shape[1:]))
    for rank, part in enumerate(parts):
        out[rank::len(parts)] = part
    return out


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``obj`` of every rank, in rank order (pickled; for results such as features)."""
    if not info.enabled:
        return [obj]
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, obj)
    return parts

