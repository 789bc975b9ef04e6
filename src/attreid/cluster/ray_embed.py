"""Embed a gallery's crops on a Ray cluster: ``attreid index build --ray ADDRESS``.

The crop list is cut into parts of whole batches (:func:`parts`); a pool of Ray actors, each
holding one predictor of the checkpoint on the backend the driver chose, embeds the parts, and
the driver writes their rows into the feature store in the order of the list, so the store, and
the gallery built from it, hold the same rows in the same order as a run in one process. Every
batch holds the same crops as in that run, so on the same backend and CPU kind the vectors
agree to float32 rounding (tests/test_ray_build.py measures the difference).

The workers read the crops by path: on a cluster of several machines the crop folder must be
at the same path on each (a shared file system); the vectors come back through Ray's object
store, so the gallery is written where the command runs. Ray: Moritz et al., "Ray: A
Distributed Framework for Emerging AI Applications", OSDI 2018; core tasks and actors only
(``ray.util.ActorPool``), no Ray Data.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from attreid.errors import AttreidError
from attreid.inference.features import (
    DEFAULT_SHARD_SIZE,
    FeatureStore,
    FeatureWriter,
    probability_matrix,
)
from attreid.utils.extras import require_extra

PART_BATCHES = 16
"""Batches per part a worker embeds at a time (1,024 crops at batch 64): small enough that the
driver holds little and the pool stays busy, large enough that a part outweighs its overhead."""

Progress = Callable[[int, int], None]


class ClusterError(AttreidError, RuntimeError):
    """Ray is missing, the cluster cannot be reached, or a worker failed; the message says
    which."""


def _ray() -> Any:
    return require_extra("ray", "index build --ray", "ray", "Ray")


@contextmanager
def ray_session(address: str) -> Iterator[Any]:
    """Ray connected to ``address`` for the block (``local``: a Ray started in this process,
    stopped after; ``auto`` or an address: an existing cluster, left running).

    Raises:
        ClusterError: no cluster at ``address``."""
    ray = _ray()
    if ray.is_initialized():  # a caller's own session (a notebook, a test): use it as it is
        yield ray
        return
    if address not in ("local", "auto"):
        _check_reachable(address)  # Ray itself retries an absent head for minutes, then exits
    try:
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR}  # no start-up chatter
        if address == "local":
            ray.init(include_dashboard=False, num_cpus=os.cpu_count() or 1, **quiet)
        else:
            ray.init(address=address, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"--ray {address}: cannot connect to a Ray cluster ({exc})") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`ClusterError` unless something accepts a TCP connection at ``address``
    (``HOST:PORT`` or ``ray://HOST:PORT``)."""
    import socket

    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray {address}: expected auto, local, HOST:PORT or "
                           "ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ClusterError(f"--ray {address}: cannot connect to a Ray cluster (nothing "
                           f"answers at {host}:{port}: {exc.strerror or exc})") from None


def parts(count: int, batch_size: int, batches: int = PART_BATCHES) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive parts of ``count`` crops, each a whole number of
    batches (the last may be short), so that every batch is the one a single process makes."""
    size = max(1, batch_size) * max(1, batches)
    return [(start, min(count, start + size)) for start in range(0, count, size)]


class _Embedder:
    """A Ray actor: one predictor, loaded once, that embeds parts of the crop list."""

    def __init__(self, checkpoint: str, backend: str, flip: bool, batch_size: int) -> None:
        from attreid.inference.backends import load_predictor

        self.batch_size = batch_size
        self.predictor, _ = load_predictor(checkpoint, backend, device="cpu",
                                           batch_size=batch_size, flip=flip)

    def embed(self, paths: list[str]) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
        """(kept paths, embeddings (N, D), probability matrix (N, P), skipped files)."""
        from attreid.search.build import embed_files

        done = embed_files(self.predictor, [Path(p) for p in paths], self.batch_size)
        return ([str(p) for p in done.paths], done.embeddings,
                probability_matrix(done.probabilities), done.skipped)


def ray_embedder(address: str, checkpoint: Path | str, backend: str, flip: bool = False,
                 batch_size: int = 64, workers: int | None = None,
                 part_batches: int = PART_BATCHES) -> Callable[..., tuple[FeatureStore,
                                                                          list[str]]]:
    """An ``embed`` for :func:`~attreid.search.engines.build_gallery`: ``embed(paths, out,
    shard_size=, progress=, overwrite=)`` embeds ``paths`` on Ray (``address`` as
    :func:`ray_session`) with ``workers`` actors of one CPU each (default: every CPU of the
    cluster) running ``checkpoint`` on ``backend`` (the name :func:`load_predictor` chose on
    the driver, so every worker runs the same), and writes the feature store ``out``.

    Returns the function; it returns (the store, skipped undecodable files as "path: reason").
    """
    def embed(paths: Sequence[Path], out: Path | str, shard_size: int = DEFAULT_SHARD_SIZE,
              progress: Progress | None = None,
              overwrite: bool = False) -> tuple[FeatureStore, list[str]]:
        with ray_session(address) as ray:
            return _embed(ray, [str(p) for p in paths], Path(out), shard_size, progress,
                          overwrite)

    def _embed(ray: Any, paths: list[str], out: Path, shard_size: int,
               progress: Progress | None, overwrite: bool) -> tuple[FeatureStore, list[str]]:
        from ray.util import ActorPool

        count = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        actor = ray.remote(num_cpus=1)(_Embedder)
        pool = ActorPool([actor.remote(str(checkpoint), backend, flip, batch_size)
                          for _ in range(count)])
        pieces = [paths[a:b] for a, b in parts(len(paths), batch_size, part_batches)]
        skipped: list[str] = []
        info = {"checkpoint": str(checkpoint), "flip": bool(flip), "backend": backend,
                "ray_workers": count}
        done = 0
        with FeatureWriter(out, shard_size, info, overwrite) as writer:
            try:
                for kept, vectors, probabilities, bad in pool.map(
                        lambda a, piece: a.embed.remote(piece), pieces):
                    if len(kept):
                        writer.add(vectors, kept, probabilities=probabilities)
                    skipped.extend(bad)
                    done += len(kept) + len(bad)
                    if progress:
                        progress(done, len(paths))
            except ray.exceptions.RayError as exc:
                raise ClusterError(f"a Ray worker failed embedding crops: {exc}") from None
        return writer.close(), skipped

    return embed


__all__ = ["ClusterError", "PART_BATCHES", "parts", "ray_embedder", "ray_session"]
