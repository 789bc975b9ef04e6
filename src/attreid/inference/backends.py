"""The inference backend, chosen per machine by measurement: ONNX Runtime, torch bf16 or torch
float32.

CPUs disagree about what is fast: for the ``cpu`` preset's MobileNetV2 at batch 32, an AMD EPYC
ran torch float32 at 390 img/s, bf16 at 712 and ONNX Runtime at 1,001; an Intel Xeon (AMX) ran
them at 85, 348 and 535 (benchmarks/RESULTS.md). ``backend="auto"`` therefore verifies and times
the candidates on the machine at hand and uses the fastest:

* ``onnx``: the checkpoint exported once to ``<cache>/onnx/<sha256>.onnx`` (keyed by the
  checkpoint's SHA-256, reused by every later command) and run with ONNX Runtime; verified when
  exported: the largest embedding difference against torch float32 on a probe batch is at most
  :data:`ONNX_TOLERANCE` (relative to the largest embedding value, at least 1) and every
  attribute label is the same. Only where ``onnxruntime`` and ``onnx`` are installed.
* ``torch-bf16``: torch under bf16 autocast, only on a CPU with native bf16 instructions
  (:func:`attreid.utils.backend.cpu_bf16_native`); verified on the probe batch: finite, and every
  embedding within :data:`BF16_TOLERANCE` (relative L2 error) of float32's. A batch whose bf16
  outputs are not finite is still recomputed in float32 (:func:`~attreid.inference.extraction.
  forward_checked`).
* ``torch-fp32``: torch in float32, always available; the reference.

ONNX Runtime runs one thread per physical core by default; where this process's CPUs are
hyper-threads of fewer cores, ``onnx (N threads)`` (one per CPU) is measured as one more
candidate.

Each verified candidate runs the probe batch (``batch_size`` images, with ``flip`` as asked)
:data:`ROUNDS` times, alternating; the best rate counts. The choice, the rates and the checks are
kept in ``<cache>/onnx/<sha256>.json`` per machine (CPU model, threads, oneDNN ISA limit,
library versions, batch size, flip), so later commands on this machine start at once. On CUDA,
``auto`` is torch with :func:`~attreid.inference.extraction.resolve_amp`'s ``auto`` precision.
``<cache>`` is ``$ATTREID_CACHE_DIR``, else ``$XDG_CACHE_HOME/attreid``, else
``~/.cache/attreid``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from attreid.data.records import DataError
from attreid.inference.extraction import Features, autocast_context, forward_tta
from attreid.inference.onnx import ExportError, OnnxPredictor, export_onnx
from attreid.inference.predictor import ImageInputError, Predictor
from attreid.utils.backend import (
    cpu_bf16_native,
    cpu_model,
    logical_cpus,
    physical_cores,
    resolve_device,
)
from attreid.utils.files import atomic_write_text, file_sha256

BACKENDS = ("auto", "onnx", "torch-bf16", "torch-fp32")
"""What ``backend=`` takes (``torch`` is accepted as ``torch-fp32``)."""
ALIASES = {"torch": "torch-fp32"}
ONNX_TOLERANCE = 1e-4
"""Largest embedding difference of ONNX Runtime against torch float32, relative to the largest
embedding value (at least 1); measured: 4e-6 to 7e-6 (benchmarks/RESULTS.md, "Inference")."""
BF16_TOLERANCE = 0.03
"""Largest relative L2 error of a bf16 embedding against float32 for bf16 to be used: bf16
keeps 8 bits of mantissa (relative rounding 0.4 %) per operation, and the errors of a few dozen
layers add up to about 1 % on the models measured (benchmarks/RESULTS.md, "Inference")."""
ROUNDS = 3
PROBE_SIZE = 64
"""Images in the probe batch at most (``batch_size`` when smaller)."""


@dataclass
class Choice:
    """What :func:`load_predictor` chose and why: ``rates`` in images/s (probe batch, flip
    included), ``checks`` one line per candidate."""

    backend: str
    reason: str
    rates: dict[str, float] = field(default_factory=dict)
    checks: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """``backend: onnx (auto: ...)``, for the command line."""
        rates = ", ".join(f"{name} {rate:,.0f} img/s" for name, rate in
                          sorted(self.rates.items(), key=lambda kv: -kv[1]))
        text = f"backend: {self.backend} ({self.reason}"
        text += f"; measured {rates})" if rates else ")"
        skipped = [f"{name}: {why}" for name, why in self.checks.items()
                   if name not in self.rates and name != self.backend]
        return text + (f"; not used: {'; '.join(skipped)}" if skipped else "")


def cache_dir() -> Path:
    """Where exports and choices are kept (see the module docstring)."""
    if os.environ.get("ATTREID_CACHE_DIR"):
        return Path(os.environ["ATTREID_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "attreid"


def _onnx_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))


def _versions() -> dict[str, str]:
    versions = {"torch": torch.__version__}
    if _onnx_installed():
        import onnxruntime

        versions["onnxruntime"] = onnxruntime.__version__
    return versions


def probe_batch(predictor: Predictor, size: int,
                images: Sequence[Path | str] = ()) -> torch.Tensor:
    """(size, 3, H, W) normalised inputs to verify and time the backends on: up to ``size`` of
    ``images`` spread over the list (the crops the command is about to embed: bf16's error on
    real crops was about 3x that on synthetic inputs), filled up, or replaced where they do
    not decode, by deterministic smooth image-like noise (random colours at an eighth of the
    resolution, upsampled bilinearly, plus fine noise)."""
    real = _decodable(predictor, images, size)
    if len(real) == size:
        return real
    tc = predictor.transform_config
    gen = torch.Generator().manual_seed(0)
    coarse = torch.randn(size, 3, max(1, tc.height // 8), max(1, tc.width // 8), generator=gen)
    smooth = torch.nn.functional.interpolate(coarse, size=(tc.height, tc.width),
                                             mode="bilinear", align_corners=False)
    noise = smooth + 0.1 * torch.randn(size, 3, tc.height, tc.width, generator=gen)
    return torch.cat([real, noise[len(real):]])


def _decodable(predictor: Predictor, images: Sequence[Path | str], size: int) -> torch.Tensor:
    """Up to ``size`` of ``images``, evenly spread, preprocessed; the undecodable left out."""
    step = max(1, len(images) // size) if images else 1
    picked, out = list(images)[::step][:size], []
    for path in picked:
        try:
            out.append(predictor.preprocess([path]))
        except (DataError, ImageInputError, OSError):
            continue
    tc = predictor.transform_config
    return torch.cat(out) if out else torch.empty(0, 3, tc.height, tc.width)


def _labels(feats: Features) -> np.ndarray:
    return np.stack([(v[:, 0] > 0).long().numpy() if v.shape[1] == 1 else
                     v.argmax(dim=1).numpy() for v in feats.logits.values()], axis=1)


def check_onnx(reference: Features, candidate: Features) -> str | None:
    """None when ``candidate`` (ONNX Runtime) matches ``reference`` (torch float32) within
    :data:`ONNX_TOLERANCE` with the same labels, else what differs."""
    scale = max(1.0, float(reference.embeddings.abs().max()))
    diff = float((candidate.embeddings - reference.embeddings).abs().max())
    if not diff <= ONNX_TOLERANCE * scale:
        return f"embeddings differ by {diff:.2e} (> {ONNX_TOLERANCE * scale:.1e})"
    if not np.array_equal(_labels(reference), _labels(candidate)):
        return "attribute labels differ from torch float32's"
    return None


def check_bf16(reference: Features, candidate: Features) -> str | None:
    """None when every bf16 output is finite, every embedding within :data:`BF16_TOLERANCE`
    (relative L2 error) of float32's and every attribute label float32's, else what differs."""
    outputs = [candidate.embeddings, *candidate.logits.values()]
    if not all(bool(t.isfinite().all()) for t in outputs):
        return "not finite"
    error = ((candidate.embeddings - reference.embeddings).norm(dim=1) /
             reference.embeddings.norm(dim=1).clamp_min(1e-12)).max()
    if not float(error) <= BF16_TOLERANCE:
        return f"relative error {float(error):.3f} (> {BF16_TOLERANCE})"
    changed = int((_labels(reference) != _labels(candidate)).sum())
    if changed:
        return f"{changed} attribute label(s) differ from torch float32's"
    return None


def cached_onnx(predictor: Predictor, probe: torch.Tensor) -> tuple[Path, str | None]:
    """The checkpoint's export in the cache (made and verified when missing or made by other
    library versions) and its check: None when verified, else what failed.

    Raises:
        ExportError: the export fails.
        OSError: the cache cannot be written.
    """
    folder = cache_dir() / "onnx"
    path, record = folder / f"{predictor.checkpoint_sha256}.onnx", _read_record(predictor)
    if _export_intact(record, path):
        return path, record["export"].get("problem")
    folder.mkdir(parents=True, exist_ok=True)
    export_onnx(predictor.checkpoint, path)
    reference = predictor.embed_batch(probe)
    problem = check_onnx(reference, OnnxPredictor(path, flip=predictor.flip).embed_batch(probe))
    record["export"] = {"versions": _versions(), "problem": problem,
                        "sha256": file_sha256(path)}
    record["choices"] = {}  # measured against the previous export
    _write_record(predictor, record)
    return path, problem


def _export_intact(record: dict[str, Any], path: Path) -> bool:
    """Whether the cached export at ``path`` is the file that ``record`` (the checkpoint's
    cache record) says was verified: made by these library versions, and its sha256 the one
    recorded then (a truncated, damaged or replaced file is exported again)."""
    made = record.get("export")
    if not isinstance(made, dict) or made.get("versions") != _versions() or not path.is_file():
        return False
    try:
        return file_sha256(path) == made.get("sha256")
    except OSError:
        return False


def _record_path(predictor: Predictor) -> Path:
    return cache_dir() / "onnx" / f"{predictor.checkpoint_sha256}.json"


def _read_record(predictor: Predictor) -> dict[str, Any]:
    """The cache's record of this checkpoint; empty when missing, unreadable or not what this
    module writes (a damaged record costs a new export and measurement, nothing else)."""
    try:
        record = json.loads(_record_path(predictor).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(record, dict):
        return {}
    if not isinstance(record.get("choices", {}), dict):
        record["choices"] = {}
    return record


def _write_record(predictor: Predictor, record: dict[str, Any]) -> None:
    path = _record_path(predictor)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")


def machine_key(batch_size: int, flip: bool) -> str:
    """What a measured choice depends on besides the model."""
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL"
    versions = " ".join(f"{k} {v}" for k, v in _versions().items())
    return (f"{cpu_model()} | {torch.get_num_threads()} threads | oneDNN {isa} | {versions} | "
            f"batch {batch_size} | flip {flip}")


def _rates(runners: dict[str, Callable[[torch.Tensor], Features]], probe: torch.Tensor
           ) -> dict[str, float]:
    for run in runners.values():  # warm-up
        run(probe)
    rates = dict.fromkeys(runners, 0.0)
    for _ in range(ROUNDS):
        for name, run in runners.items():
            start = time.perf_counter()
            run(probe)
            rates[name] = max(rates[name], len(probe) / (time.perf_counter() - start))
    return rates


def _candidates(reference: Predictor, probe: torch.Tensor, checks: dict[str, str]
                ) -> dict[str, Any]:
    """The verified predictors, by backend name; ``checks`` gets why the others are out."""
    found: dict[str, Any] = {"torch-fp32": reference}
    expected = reference.embed_batch(probe)
    if not _onnx_installed():
        checks["onnx"] = "onnxruntime is not installed (pip install 'attreid[onnx]')"
    else:
        try:
            path, problem = cached_onnx(reference, probe)
            if not problem:
                found["onnx"] = _onnx_from(path, reference)
                threads = _extra_onnx_threads()
                if threads:
                    found[f"onnx ({threads} threads)"] = _onnx_from(path, reference, threads)
        except (ExportError, OSError) as exc:
            problem = str(exc)
        if problem:
            checks["onnx"] = problem
    if not cpu_bf16_native():
        checks["torch-bf16"] = "no native bf16 instructions on this CPU"
    else:
        bf16 = _torch(reference, "bf16")
        problem = check_bf16(expected, _raw_bf16(bf16, probe))
        if problem:
            checks["torch-bf16"] = problem
        else:
            found["torch-bf16"] = bf16
    return found


def _raw_bf16(predictor: Predictor, probe: torch.Tensor) -> Features:
    """bf16 outputs as the kernels give them, without the float32 recomputation of a
    non-finite batch that :meth:`Predictor.embed_batch` does (which would hide them)."""
    device = predictor.device
    with autocast_context(device, "bf16"):
        out = forward_tta(predictor.model, probe.to(device), predictor.flip)
    return Features(out.embedding.cpu(), {k: v.cpu() for k, v in out.attribute_logits.items()})


def _torch(reference: Predictor, amp: str) -> Predictor:
    """A Predictor sharing ``reference``'s model, with another precision."""
    other = Predictor.__new__(Predictor)
    other.__dict__.update(reference.__dict__)
    other.amp = amp
    return other


def _extra_onnx_threads() -> int | None:
    """ONNX Runtime runs one thread per physical core by default; where the CPUs this process
    has are hyper-threads of fewer cores (2 vCPUs on 1 core, say), one thread per CPU is a
    second candidate, measured like the others. None where the two counts agree."""
    logical = logical_cpus()
    return logical if logical > physical_cores() else None


def _onnx_from(path: Path, reference: Predictor, threads: int | None = None) -> OnnxPredictor:
    onnx = OnnxPredictor(path, batch_size=reference.batch_size, flip=reference.flip,
                         threads=threads)
    onnx.checkpoint = reference.checkpoint  # what the search index and the features name
    onnx.config = reference.config
    return onnx


def _saved(reference: Predictor, key: str) -> tuple[Any, Choice] | None:
    """The choice measured earlier on this machine for this checkpoint, when its predictor
    can still be made without measuring (the export is in the cache and verified)."""
    record = _read_record(reference)
    saved = record.get("choices", {}).get(key)
    try:
        choice = Choice(str(saved["backend"]), "auto, measured earlier on this machine",
                        dict(saved["rates"]), dict(saved.get("checks", {})))
        threads = saved.get("threads")
    except (TypeError, KeyError, ValueError):  # no record, or not one this module wrote
        return None
    if choice.backend == "torch-fp32":
        return reference, choice
    if choice.backend == "torch-bf16":
        return _torch(reference, "bf16"), choice
    path = cache_dir() / "onnx" / f"{reference.checkpoint_sha256}.onnx"
    if not choice.backend.startswith("onnx") or not _export_intact(record, path):
        return None
    try:
        return _onnx_from(path, reference, threads), choice
    except ExportError:
        return None


def _auto(reference: Predictor, images: Sequence[Path | str]) -> tuple[Any, Choice]:
    if reference.device.type != "cpu":
        reference.amp = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return reference, Choice(f"torch-{reference.amp}", f"auto on {reference.device}")
    key = machine_key(reference.batch_size, reference.flip)
    saved = _saved(reference, key)
    if saved is not None:
        return saved
    probe = probe_batch(reference, min(PROBE_SIZE, reference.batch_size), images)
    checks: dict[str, str] = {}
    found = _candidates(reference, probe, checks)
    rates = _rates({name: p.embed_batch for name, p in found.items()}, probe)
    best = max(rates, key=rates.__getitem__)
    choice = Choice(best, "auto, the fastest verified on this machine", rates, checks)
    record = _read_record(reference)
    record.setdefault("choices", {})[key] = {"backend": best, "rates": rates, "checks": checks,
                                             "threads": getattr(found[best], "threads", None)}
    try:
        _write_record(reference, record)
    except OSError:
        pass  # an unwritable cache costs a measurement next time, nothing else
    return found[best], choice


def load_predictor(path: Path | str, backend: str = "auto", device: str | None = None,
                   batch_size: int = 64, flip: bool = False,
                   probe_images: Sequence[Path | str] = ()) -> tuple[Any, Choice]:
    """A predictor for ``path`` (a checkpoint, or an ONNX file made by ``attreid export``) on
    ``backend`` (see the module docstring), and the :class:`Choice` made.

    ``probe_images``: image files of the job at hand; up to :data:`PROBE_SIZE` of them are
    the probe the backends are verified and timed on (synthetic inputs fill up).

    Every predictor returned has :class:`~attreid.Predictor`'s interface (``predict``,
    ``embed_batch``, ``distance``, ``trained_tasks``, ``checkpoint_sha256``, ...).

    Raises:
        ValueError: an unknown backend, or a torch backend for an ONNX file.
        CheckpointError: the checkpoint cannot be read.
        ExportError: the ONNX file cannot be read, or ``onnx`` was asked for and the export
            fails or does not match torch float32.
    """
    backend = ALIASES.get(backend, backend)
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)} (or "
                         "torch, the same as torch-fp32)")
    if Path(path).suffix == ".onnx":
        if backend not in ("auto", "onnx"):
            raise ValueError(f"{path}: an ONNX file runs with backend onnx (or auto), not "
                             f"{backend}; pass the checkpoint for a torch backend")
        return (OnnxPredictor(path, batch_size=batch_size, flip=flip),
                Choice("onnx", "an ONNX file"))
    amp = {"torch-bf16": "bf16", "torch-fp32": "none"}.get(backend, "none")
    reference = Predictor(path, device=device, batch_size=batch_size, flip=flip, amp=amp)
    if backend == "auto":
        return _auto(reference, probe_images)
    if backend != "onnx":
        return reference, Choice(backend, "as asked")
    if resolve_device(device or "auto").type != "cpu":
        raise ValueError("backend onnx runs on the CPU (CPUExecutionProvider); pass --device "
                         "cpu, or use a torch backend on the GPU")
    probe = probe_batch(reference, min(PROBE_SIZE, batch_size), probe_images)
    onnx_path, problem = cached_onnx(reference, probe)
    if problem:
        raise ExportError(f"{path}: its ONNX export does not match torch float32: {problem}")
    return _onnx_from(onnx_path, reference), Choice("onnx", f"as asked, export {onnx_path}")


__all__ = ["BACKENDS", "Choice", "cache_dir", "load_predictor"]
