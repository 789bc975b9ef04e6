"""Micro-batching of the model for concurrent requests.

A service that embeds each uploaded crop on its own runs one forward pass per request, one at a
time, and under load requests queue behind each other. :class:`EmbeddingBatcher` gives the model
to one worker thread: a request hands its image over and waits; the worker takes the oldest
waiting image together with every other image already waiting (up to ``max_batch``) and embeds
them in one pass. Nothing waits on purpose: a lone request is embedded at once, and batches form
only from requests that would otherwise have queued (on a CPU a batch of 16 crops costs far less
than 16 single passes; ``benchmarks/service_burst.py``).
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable, Sequence

import numpy as np


class EmbeddingBatcher:
    """Embed images from many threads in shared batched passes of ``embed_many``.

    Args:
        embed_many: N images -> (N, D) embeddings, e.g. :meth:`GallerySearch.embed_many`; only
            the worker thread calls it, so it needs no lock.
        max_batch: most images per pass; 1 embeds every image alone (still one at a time).

    An exception of ``embed_many`` is raised in every request of that batch.
    """

    def __init__(self, embed_many: Callable[[Sequence[Any]], np.ndarray],
                 max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.embed_many, self.max_batch = embed_many, max_batch
        self.passes = self.embedded = self.largest = 0  # passes run, images, biggest pass
        self._waiting: queue.SimpleQueue[tuple[Any, Future]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._start = threading.Lock()

    def embed(self, image: Any) -> np.ndarray:
        """The embedding (D,) of ``image``, computed in the next pass of the worker."""
        self._ensure_worker()
        done: Future = Future()
        self._waiting.put((image, done))
        return done.result()

    def _ensure_worker(self) -> None:
        with self._start:
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="attreid-embed",
                                                daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while True:
            batch = [self._waiting.get()]  # block until a request comes
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._waiting.get_nowait())  # whatever else already waits
                except queue.Empty:
                    break
            self._embed(batch)

    def _embed(self, batch: list[tuple[Any, Future]]) -> None:
        self.passes, self.embedded = self.passes + 1, self.embedded + len(batch)
        self.largest = max(self.largest, len(batch))
        try:
            vectors = self.embed_many([image for image, _ in batch])  # (B, D)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests
            for _, done in batch:
                done.set_exception(exc)
            return
        for (_, done), vector in zip(batch, vectors):
            done.set_result(vector)
