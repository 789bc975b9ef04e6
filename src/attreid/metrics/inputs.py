"""Inputs of the metrics: numpy arrays or torch tensors, checked and converted (errors name the
argument and the expected shape)."""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]
"""What every metric accepts: a numpy array or a torch tensor."""


def to_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    """numpy array, tensor (or a plain list) -> tensor, without a copy when possible."""
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (np.ndarray, list, tuple)):
        return torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")


def to_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, (np.ndarray, list, tuple)):
        return np.asarray(x)
    raise TypeError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")


def ids_1d(x: ArrayLike, name: str, length: int, length_name: str) -> torch.Tensor:
    t = to_tensor(x, name)
    if t.ndim != 1 or t.shape[0] != length:
        raise ValueError(
            f"{name}: expected shape ({length},) to match {length_name}, got {tuple(t.shape)}"
        )
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer ids, got dtype {t.dtype}")
    return t.to(torch.int64)


# --------------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------------
