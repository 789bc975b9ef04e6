"""Tests for attreid.data.cache: decode-once image cache, disk cache, cached loader."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision.transforms as T
from helpers import labels_for
from PIL import Image
from torch.utils.data import DataLoader

import attreid.data.cache as cache_module
from attreid.config import Config, with_updates
from attreid.data.batch_transforms import BatchAugment
from attreid.data.cache import CachedLoader, ImageCache, cache_name
from attreid.data.dataset import ImageDataset
from attreid.data.io import read_image
from attreid.data.records import DataError, ImageRecord
from attreid.data.sampler import PKSampler
from attreid.data.transforms import TransformConfig, build_transforms
from attreid.training.distributed import DistInfo
from attreid.training.engine import _ranked_cache

H, W = 32, 16


def _write(path: Path, seed: int, size: tuple[int, int] = (48, 100), mode: str = "RGB") -> Path:
    """A random image file (width, height) = size."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").convert(mode).save(path)
    return path


@pytest.fixture()
def paths(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = [(48, 100), (64, 128), (30, 60), (16, 32), (100, 50), (64, 128)]
    files = [_write(folder / f"{i}.jpg", i, size) for i, size in enumerate(sizes)]
    return files + [_write(folder / "grey.png", 9, mode="L"), _write(folder / "p.png", 8, mode="P")]


def _reference(path: Path) -> torch.Tensor:
    """The eval transform's pixels before ToTensor: uint8 (3, H, W)."""
    return torch.from_numpy(np.array(T.Resize((H, W))(read_image(path)))).permute(2, 0, 1)


def _count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []

    def counting(path):
        calls.append(Path(path))
        return read_image(path)

    monkeypatch.setattr(cache_module, "read_image", counting)
    return calls


def test_build_decodes_once_and_equals_eval_resize(paths, monkeypatch) -> None:
    calls = _count_decodes(monkeypatch)
    cache = ImageCache.build(paths, H, W, workers=3)
    assert sorted(calls) == sorted(paths)
    assert cache.images.shape == (len(paths), 3, H, W) and cache.images.dtype == torch.uint8
    assert len(cache) == len(paths) and cache.nbytes == len(paths) * 3 * H * W
    for i, path in enumerate(paths):
        assert torch.equal(cache.images[i], _reference(path))


def test_eval_batch_from_cache_equals_pil_eval_transform(paths) -> None:
    cfg = TransformConfig(height=H, width=W)
    cache = ImageCache.build(paths, H, W)
    out = BatchAugment(cfg, train=False)(cache.batch(range(len(paths))))
    transform = build_transforms(cfg, train=False)
    reference = torch.stack([transform(read_image(p)) for p in paths])
    assert torch.allclose(out, reference, atol=1e-6, rtol=0)


def test_batch_selects_indices(paths) -> None:
    cache = ImageCache.build(paths, H, W)
    batch = cache.batch([3, 0, 3])
    assert batch.shape == (3, 3, H, W)
    assert torch.equal(batch[0], cache.images[3]) and torch.equal(batch[1], cache.images[0])


def test_progress_reports_every_image(paths) -> None:
    seen: list[tuple[int, int]] = []
    ImageCache.build(paths, H, W, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (len(paths), len(paths)) and len(seen) == len(paths)


def test_disk_cache_round_trip_skips_decoding(paths, tmp_path, monkeypatch) -> None:
    first = ImageCache.build(paths, H, W, cache_dir=tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [cache_name(paths, H, W)]
    calls = _count_decodes(monkeypatch)
    second = ImageCache.build(paths, H, W, cache_dir=tmp_path / "cache")
    assert calls == [] and torch.equal(first.images, second.images)
    second.images[0].zero_()  # a private, writable copy: the file is untouched
    assert torch.equal(ImageCache.build(paths, H, W, cache_dir=tmp_path / "cache").images,
                       first.images)


def test_disk_cache_name_depends_on_size_and_files(paths) -> None:
    name = cache_name(paths, H, W)
    assert cache_name(paths, H, W) == name
    assert cache_name(paths, H + 1, W) != name
    assert cache_name(paths[:-1], H, W) != name
    assert cache_name(list(reversed(paths)), H, W) != name


def test_changed_file_invalidates_disk_cache(paths, tmp_path, monkeypatch) -> None:
    first = ImageCache.build(paths, H, W, cache_dir=tmp_path / "cache")
    _write(paths[2], seed=99, size=(30, 60))
    stat = paths[2].stat()
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    calls = _count_decodes(monkeypatch)
    second = ImageCache.build(paths, H, W, cache_dir=tmp_path / "cache")
    assert len(calls) == len(paths)
    assert torch.equal(second.images[2], _reference(paths[2]))
    assert not torch.equal(second.images[2], first.images[2])
    assert torch.equal(second.images[3], first.images[3])


@pytest.mark.parametrize("content", ["garbage", "truncated", "wrong_shape", "wrong_dtype"])
def test_corrupt_or_mismatched_disk_cache_is_rebuilt(paths, tmp_path, content) -> None:
    folder = tmp_path / "cache"
    good = ImageCache.build(paths, H, W, cache_dir=folder)
    file = folder / cache_name(paths, H, W)
    if content == "garbage":
        file.write_bytes(b"not a numpy file at all")
    elif content == "truncated":
        file.write_bytes(file.read_bytes()[:-100])
    elif content == "wrong_shape":
        np.save(file, np.zeros((len(paths), 3, H, W + 1), dtype=np.uint8))
    else:
        np.save(file, np.zeros((len(paths), 3, H, W), dtype=np.float32))
    with pytest.warns(UserWarning, match="unusable image cache"):
        rebuilt = ImageCache.build(paths, H, W, cache_dir=folder)
    assert torch.equal(rebuilt.images, good.images)
    assert torch.equal(ImageCache.build(paths, H, W, cache_dir=folder).images, good.images)


@pytest.mark.parametrize("with_disk_cache", [False, True])
def test_corrupt_image_raises_data_error_naming_it(paths, tmp_path, with_disk_cache) -> None:
    bad = paths[0].parent / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 broken jpeg")
    folder = tmp_path / "cache" if with_disk_cache else None
    with pytest.raises(DataError, match="bad.jpg"):
        ImageCache.build(paths + [bad], H, W, cache_dir=folder)
    if folder is not None:
        assert not folder.exists() or list(folder.iterdir()) == []


def test_missing_image_raises_data_error(paths, tmp_path) -> None:
    missing = tmp_path / "missing.jpg"
    for folder in (None, tmp_path / "cache"):
        with pytest.raises(DataError, match="missing.jpg"):
            ImageCache.build(paths + [missing], H, W, cache_dir=folder)


def test_failed_write_leaves_no_temporary_file(paths, tmp_path, monkeypatch) -> None:
    def failing_save(file, array):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(cache_module.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ImageCache.build(paths, H, W, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_rejects_bad_arguments(paths) -> None:
    with pytest.raises(ValueError):
        ImageCache.build(paths, 0, W)
    with pytest.raises(ValueError, match="uint8"):
        ImageCache(torch.zeros(2, 3, H, W), paths[:2])
    with pytest.raises(ValueError, match="paths"):
        ImageCache(torch.zeros(2, 3, H, W, dtype=torch.uint8), paths[:3])


def _dataset(paths: list[Path]) -> ImageDataset:
    records = [ImageRecord(p, pid=10 + i // 2, camid=1 + i % 2,
                           attributes=tuple(labels_for(10 + i // 2))) for i, p in enumerate(paths)]
    return ImageDataset(records, build_transforms(TransformConfig(height=H, width=W), False))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_cached_loader_matches_dataloader_in_eval(paths, prefetch) -> None:
    data = _dataset(paths)
    cache = ImageCache.build(paths, H, W)
    sampler = PKSampler(data.pids(), p=2, k=2, seed=3, num_batches=3)
    augment = BatchAugment(TransformConfig(height=H, width=W), train=False)
    cached = CachedLoader(data, cache, sampler, augment, torch.Generator(), prefetch=prefetch)
    assert len(cached) == 3
    batches = list(cached)
    for got, ref in zip(batches, DataLoader(data, batch_sampler=sampler), strict=True):
        assert got.keys() == ref.keys()
        for key in ref:
            if key == "image":
                assert torch.allclose(got[key], ref[key], atol=1e-6, rtol=0)
            else:
                assert torch.equal(got[key], ref[key]), key
                assert got[key].dtype == ref[key].dtype, key


def test_cached_loader_prefetch_is_deterministic(paths) -> None:
    data, cache = _dataset(paths), ImageCache.build(paths, H, W)
    augment = BatchAugment(TransformConfig(height=H, width=W, recipe="reid"), train=True)

    def images(prefetch: int) -> list[torch.Tensor]:
        sampler = PKSampler(data.pids(), p=2, k=2, seed=0, num_batches=4)
        loader = CachedLoader(data, cache, sampler, augment, torch.Generator().manual_seed(5),
                              prefetch=prefetch)
        return [b["image"] for b in loader]

    for a, b in zip(images(0), images(1), strict=True):
        assert torch.equal(a, b)


def test_cached_loader_errors_and_early_stop(paths) -> None:
    data, cache = _dataset(paths), ImageCache.build(paths, H, W)

    def broken(images, generator):
        raise RuntimeError("augment failed")

    sampler = PKSampler(data.pids(), p=2, k=2, num_batches=50)
    with pytest.raises(RuntimeError, match="augment failed"):
        next(iter(CachedLoader(data, cache, sampler, broken, torch.Generator())))
    augment = BatchAugment(TransformConfig(height=H, width=W), train=False)
    for i, _ in enumerate(CachedLoader(data, cache, sampler, augment, torch.Generator())):
        if i == 1:
            break  # the producer thread must stop instead of hanging
    with pytest.raises(ValueError, match="cache holds"):
        CachedLoader(data, ImageCache.build(paths[:2], H, W), sampler, augment,
                     torch.Generator())


# ---- data.cache_dir under DDP -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cache_worker(rank: int, world: int, port: int, paths: list[Path], folder: Path,
                  out: dict) -> None:
    """One gloo rank: the engine's cache set-up (rank 0 decodes and saves, the others load)
    into ``folder / 'engine'``, then every rank building the same disk cache at once into
    ``folder / 'race'``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    info = DistInfo(rank, world)
    cfg = with_updates(Config(), data={"cache": True, "cache_dir": str(folder / "engine"),
                                       "height": H, "width": W})
    bundle = SimpleNamespace(train=_dataset(paths))
    engine_images = _ranked_cache(cfg, bundle, lambda _: None, info).images
    dist.barrier()  # both ranks start the next build together
    race_images = ImageCache.build(paths, H, W, cache_dir=folder / "race").images
    out[rank] = (engine_images, race_images)
    dist.destroy_process_group()


def test_cache_dir_shared_by_two_ranks_holds_one_complete_cache(paths, tmp_path) -> None:
    """data.cache_dir under DDP, 2 gloo ranks: through the engine (rank 0 first) and with both
    ranks building at once, the folder ends with exactly one file, the cache's name, no
    temporary left; its images and each rank's equal the images decoded without a cache,
    byte for byte.

    Mutations caught: ``_save_npy`` writing its temporary and never renaming it (no cache
    file, a .tmp left); ``_ranked_cache`` handing rank 1 its images in another order."""
    out = mp.Manager().dict()
    mp.spawn(_cache_worker, args=(2, _free_port(), paths, tmp_path, out), nprocs=2)
    reference = ImageCache.build(paths, H, W).images  # (N, 3, H, W) uint8, no disk cache
    for i, path in enumerate(paths):
        assert torch.equal(reference[i], _reference(path))
    name = cache_name(paths, H, W)
    for folder in ("engine", "race"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == [name], folder
        saved = np.load(tmp_path / folder / name)
        assert saved.dtype == np.uint8 and np.array_equal(saved, reference.numpy()), folder
    for rank in (0, 1):
        engine_images, race_images = out[rank]
        assert torch.equal(engine_images, reference), rank
        assert torch.equal(race_images, reference), rank
