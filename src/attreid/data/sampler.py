"""PK batch sampler for metric learning: P identities x K images per batch."""

from __future__ import annotations

import operator
from typing import Iterator, Sequence

import numpy as np
import torch


class PKSampler(torch.utils.data.Sampler[list[int]]):
    """Batch sampler yielding batches of ``P`` distinct identities with ``K`` images each.

    Use it as ``DataLoader(dataset, batch_sampler=PKSampler(labels, p, k))``; ``labels[i]`` is the
    identity of dataset item ``i``. Labels may be any integers (raw Market-1501 ids such as
    2, 7, 1500, negative ids too): they are only compared for equality.

    Rules:

    * **Batch layout.** A batch is a list of ``P * K`` dataset indices. The ``K`` indices of one
      identity are contiguous: positions ``[j * K, (j + 1) * K)`` belong to the ``j``-th identity
      of the batch, and the ``P`` identities of a batch are distinct.
    * **Epoch.** The distinct identities are shuffled and consumed ``P`` at a time, so each
      identity appears at most once per pass. By default an epoch is one pass:
      ``len(sampler) == num_identities // P`` batches, and the ``num_identities % P`` identities
      left over at the end of the shuffle are not used in that epoch (the partial batch is
      dropped, since a triplet batch needs ``P`` identities; the shuffle changes every epoch, so
      every identity is seen over several epochs).
    * **num_batches.** When given, it overrides the epoch length. If it exceeds
      ``num_identities // P``, the sampler drops the remainder of the first pass and continues
      with a fresh shuffle of all identities (drawn from the same generator), and so on; an
      identity then appears at most once per pass, and never twice in one batch. If it is
      smaller, the epoch simply stops early.
    * **Images per identity.** An identity with at least ``K`` images gets ``K`` of them drawn
      without replacement. An identity with ``n < K`` images gets all ``n`` of them once plus
      ``K - n`` repeats drawn uniformly with replacement from its images; the ``K`` indices are
      then shuffled within the identity's block.
    * **Determinism.** All randomness comes from ``np.random.default_rng((seed, epoch))``,
      created afresh at every ``__iter__``. The same labels, ``p``, ``k``, ``seed`` and epoch give
      the same batches, so iterating twice without :meth:`set_epoch` repeats the batches; call
      ``set_epoch(e)`` before each epoch to get a new order. Seed and epoch are kept apart:
      ``(seed=0, epoch=1)`` and ``(seed=1, epoch=0)`` give different batches.

    Args:
        labels: identity of every dataset item, shape ``(N,)``, integers.
        p: identities per batch, ``>= 2`` and at most the number of distinct identities.
        k: images per identity, ``>= 1``.
        seed: non-negative base seed.
        num_batches: batches per epoch, ``>= 1``; ``None`` for ``num_identities // p``.

    Raises:
        ValueError: on empty or non 1-d or non-integer labels, ``p < 2``, ``k < 1``, ``p`` larger
            than the number of identities, a negative seed or ``num_batches < 1``.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        p: int,
        k: int,
        seed: int = 0,
        num_batches: int | None = None,
    ) -> None:
        self.p = _as_int(p, "p")
        self.k = _as_int(k, "k")
        self.seed = _as_int(seed, "seed")
        if self.p < 2:
            raise ValueError(f"p must be >= 2 identities per batch, got p={self.p}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1 images per identity, got k={self.k}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got seed={self.seed}")
        self.labels = _check_labels(labels)
        self.identities, self._index_groups = _group_by_identity(self.labels)
        if self.p > len(self.identities):
            raise ValueError(
                f"P={self.p} identities per batch but labels hold only "
                f"{len(self.identities)} identities"
            )
        if num_batches is not None:
            num_batches = _as_int(num_batches, "num_batches")
            if num_batches < 1:
                raise ValueError(f"num_batches must be >= 1 or None, got {num_batches}")
        self.num_batches = num_batches
        self.epoch = 0

    @property
    def batches_per_pass(self) -> int:
        """Batches in one pass over the shuffled identities: ``num_identities // P``."""
        return len(self.identities) // self.p

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next ``__iter__`` yields (seeded by (seed, epoch))."""
        epoch = _as_int(epoch, "epoch")
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got epoch={epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        """Number of batches per epoch."""
        return self.batches_per_pass if self.num_batches is None else self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        """Yield ``len(self)`` batches, each a list of ``P * K`` dataset indices."""
        rng = np.random.default_rng((self.seed, self.epoch))
        num_ids = len(self.identities)
        order = np.empty(0, dtype=np.int64)
        cursor = 0
        for _ in range(len(self)):
            if cursor + self.p > len(order):  # start a fresh pass, dropping the remainder
                order = rng.permutation(num_ids)
                cursor = 0
            chosen = order[cursor : cursor + self.p]
            cursor += self.p
            yield [int(i) for g in chosen for i in self._draw_k(self._index_groups[g], rng)]

    def _draw_k(self, indices: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw ``K`` of one identity's dataset indices ``(n,)`` -> ``(K,)``."""
        n = len(indices)
        if n >= self.k:
            return rng.choice(indices, size=self.k, replace=False)
        repeats = rng.choice(indices, size=self.k - n, replace=True)
        return rng.permutation(np.concatenate([indices, repeats]))


def _as_int(value: object, name: str) -> int:
    """Return ``value`` as a Python int, rejecting bools, floats and other non-integers."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


def _check_labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Validate labels and return them as an int64 array of shape ``(N,)``."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-d with shape (N,), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("labels are empty; expected at least P identities")
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64, copy=False)


def _group_by_identity(labels: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Split ``(N,)`` labels into sorted unique ids ``(I,)`` and each id's dataset indices."""
    identities, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(counts)[:-1])
    return identities, groups
