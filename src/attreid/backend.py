"""Process-wide settings of PyTorch's CPU kernel library (oneDNN), applied on ``import attreid``.

On Intel Xeons with AMX, the bf16 AMX kernels of the oneDNN that torch 2.14.1 bundles (v3.12.0)
intermittently return NaN for finite inputs: a convolution under CPU bf16 autocast, a different
training step each run (docs/RELIABILITY.md, "CPU bf16"). The kernels are picked by the best ISA
of the processor, so attreid caps oneDNN at :data:`ONEDNN_ISA_CAP` (AVX-512 with its bf16
instructions, no AMX). The cap changes nothing on CPUs without AMX (AMD EPYC, older Xeons) and
nothing for float32, which never runs on AMX tiles; bf16 runs on the same AVX-512-BF16 kernels on
both kinds of machine.

A user's own ``ONEDNN_MAX_CPU_ISA`` (or the older ``DNNL_MAX_CPU_ISA``) is left as it is, so
``ONEDNN_MAX_CPU_ISA=ALL`` turns AMX back on. oneDNN reads the variable once, at its first
kernel: the cap only works when attreid is imported before the process runs any convolution
or matmul on the CPU. Where it comes too late, the engine's guard (a bf16 step with non-finite
values is recomputed in float32) still keeps a run alive.

This module imports nothing heavy: ``import attreid`` stays light.
"""

from __future__ import annotations

import os
from typing import MutableMapping

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
