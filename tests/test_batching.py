"""Micro-batching of the model across concurrent requests (attreid.search.batching)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from attreid.search.batching import EmbeddingBatcher


def _slow_embed(images):
    """(N,) ints -> (N, 2) vectors [i, 2i]; slow, so that requests queue meanwhile."""
    time.sleep(0.02)
    return np.array([[i, 2 * i] for i in images], dtype=np.float32)


def test_concurrent_requests_share_passes_and_each_gets_its_own_vector():
    batcher = EmbeddingBatcher(_slow_embed, max_batch=8)
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(batcher.embed, range(64)))
    for i, vector in enumerate(results):
        assert vector.tolist() == [i, 2 * i]
    assert batcher.embedded == 64 and batcher.largest <= 8
    assert batcher.passes < 64 and batcher.largest > 1  # requests did share passes


def test_a_lone_request_is_embedded_alone_and_at_once():
    batcher = EmbeddingBatcher(lambda images: np.ones((len(images), 3)), max_batch=16)
    assert batcher.embed("x").shape == (3,)
    assert (batcher.passes, batcher.largest) == (1, 1)


def test_max_batch_one_embeds_one_at_a_time():
    active, most = [0], [0]
    lock = threading.Lock()

    def embed(images):
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.005)
        with lock:
            active[0] -= 1
        return np.zeros((len(images), 1))

    batcher = EmbeddingBatcher(embed, max_batch=1)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(batcher.embed, range(16)))
    assert batcher.largest == 1 and batcher.passes == 16 and most[0] == 1


def test_an_error_reaches_every_request_of_its_batch_and_the_worker_goes_on():
    def embed(images):
        if "bad" in images:
            raise RuntimeError("cannot embed")
        return np.zeros((len(images), 2))

    batcher = EmbeddingBatcher(embed)
    with pytest.raises(RuntimeError, match="cannot embed"):
        batcher.embed("bad")
    assert batcher.embed("good").shape == (2,)  # the worker survived
    with pytest.raises(ValueError, match="max_batch"):
        EmbeddingBatcher(embed, max_batch=0)
