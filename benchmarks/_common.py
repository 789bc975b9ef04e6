"""Shared by the benchmark scripts: the machine line and writing a section of RESULTS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
"""The /proc/cpuinfo flags that decide which kernels oneDNN and ONNX Runtime run."""


def machine() -> str:
    """One line: CPU model and its ISA flags, the oneDNN ISA limit, cores, torch and its thread
    count, Python."""
    from attreid.utils.backend import cpu_flags, cpu_model

    flags = [f for f in ISA_FLAGS if f in cpu_flags()]
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL"
    return (f"{cpu_model()} ({platform.machine()}; {' '.join(flags) or 'no AVX2'}; oneDNN "
            f"limit {isa}), nproc {os.cpu_count()}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def replace_section(section: str, intro: str, body: str, results: Path = RESULTS) -> None:
    """Replace the ``section`` heading's text in ``results`` (re-read just before writing) by
    ``intro`` and ``body``, keeping the other sections; append the section when missing."""
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    head, found, rest = text.partition(section)
    nxt = rest.find("\n## ") if found else -1
    after = rest[nxt + 1:] if nxt >= 0 else ""
    new = f"{section}\n\n{intro.strip()}\n\n{body.strip()}\n"
    results.write_text(head.rstrip("\n") + "\n\n" + new + ("\n" + after if after else ""))
