"""Embedding image files with any predictor (torch or ONNX Runtime), the decoding of the next
batch overlapped with the model's forward pass on this one.

On 2 cores, DataLoader worker processes slow a model down more than they save (they take CPU
from its threads; benchmarks/RESULTS.md, "Training throughput"). Here one background thread
decodes, resizes and normalises the next batch while the model runs (PIL and torch release the
GIL for that work); :data:`DECODE_AHEAD` batches at most wait decoded. benchmarks/
evaluate_market.py measures it against decoding in line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from attreid.inference.extraction import Features
from attreid.utils.backend import trim_heap
from attreid.utils.threads import prefetch

DECODE_AHEAD = 1
"""Batches decoded ahead of the model (0: decode in line, no thread)."""


def _decoded(predictor: Any, paths: Sequence[Path | str], batch_size: int
             ) -> Iterator[torch.Tensor]:
    for start in range(0, len(paths), batch_size):
        yield torch.as_tensor(predictor.preprocess(list(paths[start:start + batch_size])))


def extract_files(predictor: Any, paths: Sequence[Path | str], batch_size: int | None = None,
                  progress: Callable[[int], None] | None = None,
                  ahead: int | None = None) -> Features:
    """Embeddings (N, D) and attribute logits of the images at ``paths``, in order.

    Args:
        predictor: a :class:`~attreid.Predictor` or :class:`~attreid.inference.onnx.
            OnnxPredictor` (flip as it was made); ``batch_size`` default: its own.
        progress: called with the number of images done after each batch.
        ahead: batches decoded ahead in a background thread (0: in line); default
            :data:`DECODE_AHEAD`.

    Raises:
        DataError: a file is missing or cannot be decoded (naming it).
    """
    size = batch_size or predictor.batch_size
    embeddings: list[torch.Tensor] = []
    logits: dict[str, list[torch.Tensor]] = {}
    done = 0
    ahead = DECODE_AHEAD if ahead is None else ahead
    for x in prefetch(_decoded(predictor, paths, size), ahead):
        out = predictor.embed_batch(x)
        embeddings.append(out.embeddings)
        for name, value in out.logits.items():
            logits.setdefault(name, []).append(value)
        done += len(x)
        del x
        trim_heap()  # the freed batch's pages go back to the system (see trim_heap)
        if progress:
            progress(done)
    if not embeddings:
        raise ValueError("no images to embed")
    return Features(torch.cat(embeddings), {k: torch.cat(v) for k, v in logits.items()})
