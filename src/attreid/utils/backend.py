"""Process-wide settings of PyTorch's CPU kernel library (oneDNN), applied on ``import attreid``.

On Intel Xeons with AMX, the bf16 AMX kernels of the oneDNN that torch 2.14.1 bundles (v3.12.0)
intermittently return NaN for finite inputs: a convolution under CPU bf16 autocast, a different
training step each run (docs/RELIABILITY.md, "CPU precision on every machine"). The kernels are
picked by the best ISA of the processor, so attreid caps oneDNN at :data:`ONEDNN_ISA_CAP` (AVX-512
with its bf16 instructions, no AMX). The cap changes nothing on CPUs without AMX (AMD EPYC, older
Xeons) and nothing for float32, which never runs on AMX tiles; bf16 runs on the same AVX-512-BF16
kernels on both kinds of machine.

A user's own ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``) is left as it is, so
``ONEDNN_MAX_CPU_ISA=ALL`` turns AMX back on. oneDNN reads the variable once, at its first
kernel: the cap only works when attreid is imported before the process runs any convolution
or matmul on the CPU. Where it comes too late, the engine's guard (a bf16 step with non-finite
values is recomputed in float32) still keeps a run alive.

Without native bf16 instructions (AVX512_BF16 or AMX-BF16) oneDNN emulates bf16, or PyTorch
falls back to reference kernels: the demo's ResNet-18 trained at 210 img/s (AVX512_CORE) and
31 img/s (AVX2) against 330 in float32 on the same AMD EPYC. :func:`cpu_bf16_native` tells
``train.amp=auto`` whether bf16 pays here.

This module imports nothing heavy: ``import attreid`` stays light.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, MutableMapping

if TYPE_CHECKING:
    import torch

ONEDNN_ISA_CAP = "AVX512_CORE_BF16"
"""The highest instruction set oneDNN may use unless the user says otherwise (no AMX)."""

_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cap_onednn_isa(environ: MutableMapping[str, str] = os.environ) -> str:
    """Set ``ONEDNN_MAX_CPU_ISA`` to :data:`ONEDNN_ISA_CAP` unless the user set a limit.

    Returns:
        The limit in force afterwards (the user's, or the cap).
    """
    for name in _ISA_VARIABLES:
        if environ.get(name):
            return environ[name]
    environ["ONEDNN_MAX_CPU_ISA"] = ONEDNN_ISA_CAP
    return ONEDNN_ISA_CAP


def _cpuinfo_lines(cpuinfo: Path) -> list[str]:
    """The lines of ``/proc/cpuinfo`` (none where it cannot be read)."""
    try:
        return cpuinfo.read_text(errors="replace").splitlines()
    except OSError:
        return []


def _first_field(cpuinfo: Path, key: str) -> str | None:
    """The value of the first ``key`` line of ``/proc/cpuinfo`` (the first CPU's), or None."""
    for line in _cpuinfo_lines(cpuinfo):
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The ISA flags of the first CPU in ``/proc/cpuinfo`` (empty where there is none)."""
    return frozenset((_first_field(cpuinfo, "flags") or "").split())


def trim_heap() -> None:
    """Hand the free pages of the C heap back to the system (glibc's ``malloc_trim``; nothing
    elsewhere). Embedding a gallery with ONNX Runtime interleaves its arena's allocations with
    each decoded batch's (12 MB at 128 crops of 128x64); glibc then keeps the freed batches'
    pages, and the resident set grew by 2 GB over Market-1501's 23,100 crops. Trimming after
    each batch kept it flat, at no measurable cost (benchmarks/RESULTS.md, "Evaluation on
    Market-1501, per backend")."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC: "ctypes.CDLL | bool | None" = None


def logical_cpus() -> int:
    """CPUs this process may run on (its affinity), hyper-threads counted."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def physical_cores(cpuinfo: Path = Path("/proc/cpuinfo")) -> int:
    """Distinct (socket, core) pairs in ``/proc/cpuinfo``: fewer than :func:`logical_cpus` where
    the CPUs are hyper-threads of shared cores (ONNX Runtime's default thread count is this);
    :func:`logical_cpus` where the file does not say."""
    cores, socket = set(), ""
    for line in _cpuinfo_lines(cpuinfo):
        key, _, value = line.partition(":")
        if key.strip() == "physical id":
            socket = value.strip()
        elif key.strip() == "core id":
            cores.add((socket, value.strip()))
    return len(cores) or logical_cpus()


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The ``model name`` of the first CPU in ``/proc/cpuinfo`` (``unknown CPU`` where there is
    none), e.g. ``AMD EPYC 9R45`` or ``Intel(R) Xeon(R) Platinum 8488C``."""
    return _first_field(cpuinfo, "model name") or "unknown CPU"


def cpu_bf16_native(flags: frozenset[str] | None = None,
                    environ: Mapping[str, str] = os.environ) -> bool:
    """Whether oneDNN runs bf16 on native instructions: the CPU has AVX512_BF16 or AMX-BF16
    and the oneDNN ISA limit in force (``ONEDNN_MAX_CPU_ISA``) lets it use them."""
    flags = cpu_flags() if flags is None else flags
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return False
    limit = (environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "ALL")
    limit = limit.upper()
    return limit in ("ALL", "DEFAULT") or any(
        tag in limit for tag in ("BF16", "FP16", "AMX", "AVX10"))


def resolve_device(name: str) -> torch.device:
    """The torch device named ``name`` (``cpu``, ``cuda``, ``cuda:1``, ...); ``auto`` picks CUDA
    when available, else the CPU."""
    import torch  # here, not at the top: `import attreid` sets the oneDNN cap before torch loads

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
