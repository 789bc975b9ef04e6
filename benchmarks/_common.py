"""Shared by the benchmark scripts: the machine line and writing a section of RESULTS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """One line: CPU, cores, torch and its thread count, Python."""
    return (f"{platform.processor() or platform.machine()}, nproc {os.cpu_count()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def replace_section(section: str, intro: str, body: str, results: Path = RESULTS) -> None:
    """Replace the ``section`` heading's text in ``results`` (re-read just before writing) by
    ``intro`` and ``body``, keeping the other sections; append the section when missing."""
    text = results.read_text() if results.exists() else "# Benchmark results\n"
    head, found, rest = text.partition(section)
    nxt = rest.find("\n## ") if found else -1
    after = rest[nxt + 1:] if nxt >= 0 else ""
    new = f"{section}\n\n{intro.strip()}\n\n{body.strip()}\n"
    results.write_text(head.rstrip("\n") + "\n\n" + new + ("\n" + after if after else ""))
