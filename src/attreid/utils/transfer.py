"""Host-to-device copies that do not make the host wait for the GPU."""

from __future__ import annotations

import torch


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``; a CPU tensor bound for CUDA goes through pinned memory with a
    non-blocking copy.

    A plain ``.to("cuda")`` from pageable memory waits until the copy is done, so every earlier
    kernel in the stream must finish first: the host stops queueing work, a hidden
    synchronisation per call. The pinned buffer comes from PyTorch's caching host allocator,
    which keeps it alive until the copy has run. Elsewhere (CPU, or already on the device) this
    is ``tensor.to(device)``.
    """
    device = torch.device(device)
    if device.type != "cuda" or tensor.device.type != "cpu":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
