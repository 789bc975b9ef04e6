"""Decode-once image cache and a loader that serves augmented batches from it.

Decoding JPEGs and running PIL transforms per image in DataLoader workers costs more CPU than a
small model's training step on a 2-core machine. :class:`ImageCache` decodes every image once,
resizes it exactly as the eval transform does (``Resize((height, width))`` on the PIL image,
bilinear with antialias) and keeps the result as one uint8 tensor ``(N, 3, H, W)``
(Market-1501's 12,936 training images at 128x64 take 318 MB). :class:`CachedLoader` then draws
batches with a batch sampler, slices them out of the cache and augments them as tensors
(:class:`attreid.data.batch_transforms.BatchAugment`) in the training process (optionally
ahead in a background thread).

With ``cache_dir`` the decoded images are also saved as a ``.npy`` file named by a hash of the
image paths, their sizes and modification times and the output size, so a second run skips
decoding; a changed image file gives a new name (the stale file is left in place).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms as T

from attreid.data.dataset import UNKNOWN, ImageDataset
from attreid.data.io import read_image
from attreid.data.records import DataError
from attreid.utils.threads import prefetch
from attreid.utils.transfer import to_device

_FORMAT = "attreid-image-cache-v1"


class ImageCache:
    """Every image of a dataset decoded once and resized, as uint8 ``(N, 3, H, W)``.

    Build it with :meth:`build`; ``images[i]`` belongs to ``paths[i]``.
    """

    def __init__(self, images: torch.Tensor, paths: Sequence[Path | str]) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if len(paths) != len(images):
            raise ValueError(f"{len(paths)} paths for {len(images)} images")
        self.images = images  # (N, 3, H, W) uint8
        self.paths = [Path(p) for p in paths]

    @classmethod
    def build(cls, paths: Sequence[Path | str], height: int, width: int, workers: int = 4,
              cache_dir: Path | str | None = None,
              progress: Callable[[int, int], None] | None = None) -> "ImageCache":
        """Decode and resize every image of ``paths`` (in threads), or load them from ``cache_dir``.

        Args:
            paths: image files, in dataset order.
            height, width: the size of the eval transform, ``Resize((height, width))``.
            workers: decoding threads (PIL releases the GIL while decoding and resizing).
            cache_dir: where to keep / find the ``.npy`` file; ``None`` for no disk cache.
            progress: called with (images done, images in all) while decoding.

        Raises:
            DataError: an image is missing or cannot be decoded; the message names the file.
        """
        if height < 1 or width < 1 or workers < 1:
            raise ValueError(f"height, width and workers must be >= 1, got {height}, {width}, "
                             f"{workers}")
        if cache_dir is None:
            return cls(_decode_all(paths, height, width, workers, progress), paths)
        file = Path(cache_dir) / cache_name(paths, height, width)
        images = _load_npy(file, (len(paths), 3, height, width))
        if images is None:
            images = _decode_all(paths, height, width, workers, progress)
            _save_npy(file, images)
        return cls(images, paths)

    @property
    def nbytes(self) -> int:
        """Memory held by the images in bytes."""
        return self.images.numel() * self.images.element_size()

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """The cached images of ``indices`` ``(B,)`` -> uint8 ``(B, 3, H, W)`` (a copy).

        On the device of ``images``: ``ImageCache(cache.images.cuda(), cache.paths)`` keeps a
        whole cache on a GPU.
        """
        index = to_device(torch.as_tensor(indices, dtype=torch.long), self.images.device)
        return self.images.index_select(0, index)


def cache_name(paths: Sequence[Path | str], height: int, width: int) -> str:
    """File name of the disk cache: hash of (paths, file sizes and mtimes, height, width).

    Raises:
        DataError: an image file is missing (named).
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([_FORMAT, height, width]).encode())
    for path in paths:
        stat = _stat(Path(path))
        digest.update(json.dumps([str(path), stat.st_size, stat.st_mtime_ns]).encode())
    return f"images_{height}x{width}_{len(paths)}_{digest.hexdigest()[:20]}.npy"


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None


def _decode_one(path: Path | str, resize: T.Resize) -> np.ndarray:
    """Decode and resize one image -> uint8 ``(3, H, W)``."""
    pixels = np.asarray(resize(read_image(path)))  # (H, W, 3)
    return pixels.transpose(2, 0, 1)


def _decode_all(paths: Sequence[Path | str], height: int, width: int, workers: int,
                progress: Callable[[int, int], None] | None) -> torch.Tensor:
    """Decode ``paths`` with ``workers`` threads -> uint8 ``(N, 3, height, width)``."""
    resize = T.Resize((height, width))
    out = np.empty((len(paths), 3, height, width), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for i, pixels in enumerate(pool.map(lambda p: _decode_one(p, resize), paths)):
            out[i] = pixels
            if progress:
                progress(i + 1, len(paths))
    return torch.from_numpy(out)


def _load_npy(file: Path, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Load a cache file into memory; ``None`` (with a warning when it exists) if unusable."""
    if not file.exists():
        return None
    try:
        array = np.load(file, mmap_mode="r")  # reads the header; data pages in on copy
        if array.dtype != np.uint8 or array.shape != shape:
            raise ValueError(f"holds {array.dtype} {array.shape}, expected uint8 {shape}")
        return torch.from_numpy(np.array(array))
    except (ValueError, OSError, EOFError) as exc:
        warnings.warn(f"{file}: unusable image cache ({exc}); decoding the images again",
                      stacklevel=3)
        return None


def _save_npy(file: Path, images: torch.Tensor) -> None:
    """Write ``images`` to ``file`` atomically (temporary file in the same folder, then rename)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=file.name + ".", suffix=".tmp", dir=file.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, images.numpy())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CachedLoader:
    """Batches like ``DataLoader(dataset, batch_sampler=...)`` gives, served from an ImageCache.

    Each batch is a dict with the keys of :class:`~attreid.data.dataset.ImageDataset` items,
    stacked: ``image`` float32 ``(B, 3, H, W)`` (``augment``'s output), ``pid``, ``label``,
    ``camid`` ``(B,)`` int64 and ``attributes`` ``(B, 12)`` int64, all on ``device``, and
    ``index`` ``(B,)`` int64 on the CPU. Nothing in a batch makes the host wait for a GPU: the
    label tables live on ``device`` and the indices go there through pinned memory.

    Randomness: the batch sampler's own seed/epoch, and ``generator`` for the augmentation,
    drawn batch after batch in order, so the batches do not depend on ``prefetch`` or timing.

    Args:
        dataset: gives labels and attributes (its transform is not used).
        cache: the dataset's images, ``cache.images[i]`` for ``dataset.records[i]``.
        batch_sampler: yields lists of dataset indices, e.g. a PKSampler.
        augment: ``(uint8 (B, 3, H, W), generator) -> float32 (B, 3, H, W)``.
        generator: CPU generator for ``augment``; seed it per epoch for exact resume.
        device: where the images go (the uint8 batch is moved before augmenting).
        prefetch: batches prepared ahead in a background thread; 0 (default) prepares each
            batch when asked. On a small CPU the thread competes with the model's intra-op
            threads and made steps slower (benchmarks/RESULTS.md); the augmentation itself
            costs about 1 % of a step.
    """

    def __init__(self, dataset: ImageDataset, cache: ImageCache, batch_sampler: Iterable[list[int]],
                 augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                 generator: torch.Generator, device: torch.device | str = "cpu",
                 prefetch: int = 0) -> None:
        if len(cache) != len(dataset):
            raise ValueError(f"cache holds {len(cache)} images, dataset {len(dataset)} records")
        self.cache, self.batch_sampler, self.augment = cache, batch_sampler, augment
        self.generator, self.device, self.prefetch = generator, torch.device(device), prefetch
        records = dataset.records
        self._pid = torch.tensor([UNKNOWN if r.pid is None else r.pid for r in records])
        self._label = torch.tensor([UNKNOWN if r.pid is None else dataset.label_of.get(
            r.pid, UNKNOWN) for r in records])
        self._camid = torch.tensor([UNKNOWN if r.camid is None else r.camid for r in records])
        self._attributes = dataset.attributes  # (N, 12)
        self._pid, self._label, self._camid, self._attributes = (
            t.to(self.device) for t in (self._pid, self._label, self._camid, self._attributes))

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batches = (self._make(indices) for indices in self.batch_sampler)
        return prefetch(batches, self.prefetch)  # 0: in this thread

    def _make(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.long)  # (B,)
        images = to_device(self.cache.batch(index), self.device)  # (B, 3, H, W) uint8
        at = to_device(index, self.device)
        return {"image": self.augment(images, self.generator), "pid": self._pid[at],
                "label": self._label[at], "camid": self._camid[at],
                "attributes": self._attributes[at], "index": index}
