"""Tests for attreid.data.sampler.PKSampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from attreid.data.sampler import PKSampler


def _labels(counts: dict[int, int], seed: int = 0) -> np.ndarray:
    """Labels with ``counts[id]`` images per id, in shuffled dataset order."""
    labels = np.concatenate([np.full(n, pid) for pid, n in counts.items()])
    return np.random.default_rng(seed).permutation(labels)


# Raw Market-style ids (non-contiguous, one negative); 11 identities, sizes 1..20.
COUNTS = {2: 20, 7: 6, 15: 4, 33: 3, 100: 1, 250: 9, 400: 2, 777: 12, 1500: 5, -1: 7, 0: 4}


def _blocks(batch: list[int], k: int) -> list[np.ndarray]:
    return [np.asarray(batch[i : i + k]) for i in range(0, len(batch), k)]


def test_batch_composition_grouped_and_distinct() -> None:
    labels = _labels(COUNTS)
    p, k = 3, 4
    batches = list(PKSampler(labels, p=p, k=k, seed=1))
    assert len(batches) == len(COUNTS) // p
    for batch in batches:
        assert len(batch) == p * k
        assert all(isinstance(i, int) for i in batch)
        block_ids = []
        for block in _blocks(batch, k):
            ids = set(labels[block].tolist())
            assert len(ids) == 1, "the K indices of one identity must be contiguous"
            block_ids.append(ids.pop())
        assert len(set(block_ids)) == p


def test_no_identity_repeats_in_epoch_and_remainder_dropped() -> None:
    labels = _labels(COUNTS)
    p, k = 3, 2
    sampler = PKSampler(labels, p=p, k=k, seed=5)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        seen = [int(labels[batch[j * k]]) for batch in sampler for j in range(p)]
        assert len(seen) == len(set(seen)), "an identity appeared twice in one epoch"
        assert len(set(COUNTS) - set(seen)) == len(COUNTS) % p == 2


def test_every_identity_seen_over_epochs() -> None:
    labels = _labels(COUNTS)
    sampler = PKSampler(labels, p=4, k=2, seed=0)
    seen: set[int] = set()
    for epoch in range(20):
        sampler.set_epoch(epoch)
        seen.update(int(labels[i]) for batch in sampler for i in batch)
    assert seen == set(COUNTS)


def test_fewer_than_k_images_all_used_then_repeated() -> None:
    labels = _labels(COUNTS)
    k = 5
    sampler = PKSampler(labels, p=len(COUNTS), k=k, seed=3)  # one batch holds every identity
    for epoch in range(5):
        sampler.set_epoch(epoch)
        (batch,) = list(sampler)
        for block in _blocks(batch, k):
            pid = int(labels[block[0]])
            own = set(np.flatnonzero(labels == pid).tolist())
            assert set(block.tolist()) <= own
            counts = Counter(block.tolist())
            if COUNTS[pid] >= k:
                assert max(counts.values()) == 1, f"id {pid} has >= K images but was repeated"
            else:
                assert set(counts) == own, f"id {pid}: every one of its images must appear"


def test_determinism_and_variation() -> None:
    labels = _labels(COUNTS)
    a = PKSampler(labels, p=3, k=4, seed=7)
    b = PKSampler(labels.tolist(), p=3, k=4, seed=7)
    assert list(a) == list(b)
    assert list(a) == list(a), "iterating twice without set_epoch must repeat the batches"
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    a.set_epoch(0)
    assert list(a) == first
    assert list(PKSampler(labels, p=3, k=4, seed=8)) != first
    shifted = PKSampler(labels, p=3, k=4, seed=8)  # seed 7 epoch 1 != seed 8 epoch 0
    a.set_epoch(1)
    assert list(a) != list(shifted)


def test_len_matches_yield_and_num_batches_override() -> None:
    labels = _labels(COUNTS)
    for p in (2, 3, 5, 11):
        sampler = PKSampler(labels, p=p, k=2)
        assert len(sampler) == len(COUNTS) // p == len(list(sampler))
    short = PKSampler(labels, p=3, k=2, num_batches=1)
    assert len(short) == 1 == len(list(short))
    assert list(short)[0] == list(PKSampler(labels, p=3, k=2))[0]


def test_num_batches_beyond_one_pass_reshuffles() -> None:
    labels = _labels(COUNTS)
    p, k, n = 3, 2, 10  # one pass holds 3 batches
    sampler = PKSampler(labels, p=p, k=k, seed=2, num_batches=n)
    batches = list(sampler)
    assert len(batches) == len(sampler) == n
    per_pass = len(COUNTS) // p
    for start in range(0, n, per_pass):
        ids = [int(labels[b[j * k]]) for b in batches[start : start + per_pass] for j in range(p)]
        assert len(ids) == len(set(ids)), "identities repeat within one pass"
    for batch in batches:
        assert len({int(labels[batch[j * k]]) for j in range(p)}) == p
    assert batches[:per_pass] == list(PKSampler(labels, p=p, k=k, seed=2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": [1, 1, 2, 2], "p": 1, "k": 2}, "p must be >= 2"),
        ({"labels": [1, 1, 2, 2], "p": 2, "k": 0}, "k must be >= 1"),
        ({"labels": list(range(20)), "p": 34, "k": 4},
         "P=34 identities per batch but labels hold only 20 identities"),
        ({"labels": [], "p": 2, "k": 2}, "labels are empty"),
        ({"labels": np.zeros((2, 3), dtype=int), "p": 2, "k": 2}, "1-d"),
        ({"labels": [1.5, 2.0], "p": 2, "k": 2}, "integers"),
        ({"labels": [1, 2], "p": 2, "k": 2, "seed": -1}, "seed"),
        ({"labels": [1, 2], "p": 2, "k": 2, "num_batches": 0}, "num_batches"),
        ({"labels": [1, 2], "p": 2.0, "k": 2}, "p must be an integer"),
    ],
)
def test_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PKSampler(**kwargs)


def test_set_epoch_rejects_negative() -> None:
    with pytest.raises(ValueError, match="epoch"):
        PKSampler([1, 2], p=2, k=1).set_epoch(-1)


def test_dataloader_with_workers() -> None:
    labels = _labels({pid: 3 + pid % 4 for pid in range(10, 30)})
    features = torch.arange(len(labels), dtype=torch.float32).unsqueeze(1)  # (N, 1) = own index
    dataset = TensorDataset(features, torch.as_tensor(labels))
    sampler = PKSampler(labels, p=4, k=3, seed=11)
    loader = DataLoader(dataset, batch_sampler=sampler, num_workers=2)
    expected = list(sampler)
    got = [(x, y) for x, y in loader]
    assert len(got) == len(sampler) == len(expected)
    for (x, y), indices in zip(got, expected):
        assert x.shape == (12, 1) and y.shape == (12,)
        assert x[:, 0].long().tolist() == indices
        assert y.view(4, 3).unique(dim=1).shape == (4, 1)  # each row one identity
        assert y.view(4, 3)[:, 0].unique().numel() == 4
