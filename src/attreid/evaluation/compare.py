"""Runs beside the study: per-task accuracy, mean, mAP and rank-1 of each run with the study's
published number for its variant (:mod:`attreid.evaluation.study`) next to it.

A run folder is one of

* a training run (``attreid train``): ``metrics.jsonl`` and ``config.yaml``. Its numbers are the
  validation metrics of the epoch training saved as ``best.pt``: the first epoch with the highest
  mean of mAP and mean attribute accuracy (mAP alone without attributes), as in the engine.
* an ``attreid evaluate`` output folder: ``metrics.json``. The variant comes from the first
  ``config.yaml`` found in the folder, beside the evaluated checkpoint, or in the parent folder
  (evaluate writes to ``eval/`` beside the checkpoint by default).

A folder that is neither (``runs/demo``) stands for its subfolders that are, in name order.
Values are percent; ``None`` where a run or the study has no number.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml
from rich.table import Table

from attreid.errors import AttreidError
from attreid.evaluation.report import rows_to_markdown, rows_to_rich
from attreid.evaluation.study import DESCRIPTION, PUBLISHED, SETUP, published
from attreid.metrics.selection import selection_score
from attreid.schema import TASK_NAMES

ROWS: tuple[str, ...] = (*TASK_NAMES, "mean", "mAP", "rank-1")
"""The table's rows: the 12 tasks, the mean accuracy, mAP and rank-1."""


class CompareError(AttreidError, ValueError):
    """A run folder cannot be read; the message names the file and what was expected."""


@dataclass(frozen=True)
class Run:
    """One run's validation metrics and where they come from.

    Attributes:
        path: the run folder.
        label: its name in the table (folder name; ``parent/folder`` for evaluate output).
        variant: ``model.name`` of its config; None when no config was found.
        metrics: validation metrics as :func:`attreid.training.validation.validate` returns them
            (``accuracy``, ``mean_accuracy``, ``mAP``, ``rank1``, ``majority``; fractions).
        epoch: the best epoch of a training run; None for evaluate output.
        epochs: the epochs a training run logged; None for evaluate output.
        notes: what keeps the run from being the study's setup, or its variant unknown.
    """

    path: Path
    label: str
    variant: str | None
    metrics: dict[str, Any]
    epoch: int | None = None
    epochs: int | None = None
    notes: tuple[str, ...] = ()

    @property
    def title(self) -> str:
        """Column heading: ``label (variant)``."""
        return f"{self.label} ({self.variant or '?'})"


def _is_run(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file() or (path / "metrics.json").is_file()


def run_folders(paths: Sequence[Path]) -> list[Path]:
    """Each path that is a run folder, or else its subfolders that are.

    Raises:
        CompareError: a path is not a folder, or neither it nor a subfolder holds a run.
    """
    folders: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise CompareError(f"{path}: folder not found")
        if _is_run(path):
            folders.append(path)
            continue
        children = sorted(p for p in path.iterdir() if p.is_dir() and _is_run(p))
        if not children:
            raise CompareError(f"{path}: no metrics.jsonl (training run) or metrics.json "
                               "(attreid evaluate output) in it or in its subfolders")
        folders += children
    return folders


def load_runs(paths: Sequence[Path]) -> list[Run]:
    """The runs of ``paths`` (see :func:`run_folders`)."""
    return [load_run(path) for path in run_folders(paths)]


def load_run(path: Path) -> Run:
    """Read one training run or evaluate output folder.

    Raises:
        CompareError: no metrics file, unreadable JSON or YAML, or no validation metrics.
    """
    if (path / "metrics.jsonl").is_file():
        return _training_run(path)
    if (path / "metrics.json").is_file():
        return _evaluate_run(path)
    raise CompareError(f"{path}: neither metrics.jsonl (training run) nor metrics.json "
                       "(attreid evaluate output)")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (blank lines skipped)."""
    records = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CompareError(f"{path}, line {number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(record, dict):
            raise CompareError(f"{path}, line {number}: expected a JSON object")
        records.append(record)
    return records


def best_record(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The epoch record ``best.pt`` was saved from: the first with the highest
    :func:`selection_score` among those with validation metrics; None when none has them."""
    best, best_score = None, 0.0
    for record in records:
        val = record.get("val")
        if not isinstance(val, dict) or not isinstance(val.get("mAP"), (int, float)):
            continue
        score = selection_score(val)
        if best is None or score > best_score:
            best, best_score = record, score
    return best


def _training_run(path: Path) -> Run:
    file = path / "metrics.jsonl"
    records = read_jsonl(file)
    best = best_record(records)
    if best is None:
        raise CompareError(f"{file}: no epoch has validation metrics (a 'val' entry with mAP); "
                           "was the run validated (data.split, train.eval_every)?")
    config = _read_config(path / "config.yaml")
    variant = _variant(config)
    notes = _notes(variant, path / "config.yaml", config, _setup(config))
    epochs = max((r.get("epoch", 0) for r in records), default=0)
    return Run(path, _name(path), variant, best["val"], epoch=best.get("epoch"), epochs=epochs,
               notes=notes)


def _evaluate_run(path: Path) -> Run:
    file = path / "metrics.json"
    try:
        metrics = json.loads(_read_text(file))
    except json.JSONDecodeError as exc:
        raise CompareError(f"{file}: not valid JSON ({exc})") from exc
    if not isinstance(metrics, dict) or "mAP" not in metrics:
        raise CompareError(f"{file}: no validation metrics (expected attreid evaluate's "
                           "metrics.json with mAP, rank1, accuracy, ...)")
    evaluated = metrics.get("setup") or {}
    config_file = _find_config(path, evaluated.get("checkpoint"))
    config = _read_config(config_file) if config_file else {}
    setup = {**_setup(config), "split": evaluated.get("split"),
             "protocol": evaluated.get("protocol")}
    variant = _variant(config)
    notes = _notes(variant, config_file or path / "config.yaml", config, setup)
    return Run(path, f"{_name(path.parent)}/{_name(path)}", variant, metrics, notes=notes)


def _name(path: Path) -> str:
    return path.name or path.resolve().name


def _read_text(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CompareError(f"{path}: cannot read ({exc})") from exc


def _read_config(path: Path) -> dict[str, Any]:
    """The resolved config as nested dicts; empty when the file is absent."""
    if not path.is_file():
        return {}
    try:
        config = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as exc:
        raise CompareError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(config, dict):
        raise CompareError(f"{path}: expected a mapping of config sections")
    return config


def _find_config(path: Path, checkpoint: str | None) -> Path | None:
    candidates = [path / "config.yaml"]
    if checkpoint:
        candidates.append(Path(checkpoint).parent / "config.yaml")
    candidates.append(path.parent / "config.yaml")
    return next((c for c in candidates if c.is_file()), None)


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    section = config.get(name)
    return section if isinstance(section, dict) else {}


def _variant(config: dict[str, Any]) -> str | None:
    name = _section(config, "model").get("name")
    return name if isinstance(name, str) else None


def _setup(config: dict[str, Any]) -> dict[str, Any]:
    """A config's setup in the terms of :data:`attreid.evaluation.study.SETUP` (None where
    unknown)."""
    data, model = _section(config, "data"), _section(config, "model")
    split = data.get("split")
    size = (data.get("height"), data.get("width"))
    distance = _section(config, "loss").get("distance")
    return {"backbone": model.get("backbone"), "weights": model.get("weights"),
            "input": f"{size[0]}x{size[1]}" if None not in size else None,
            "epochs": _section(config, "optim").get("epochs"), "split": split,
            "protocol": None if split is None else "market" if split == "test" else "seed",
            "distance": "euclidean" if distance == "squared" else distance}


def _notes(variant: str | None, config_file: Path, config: dict[str, Any],
           setup: dict[str, Any]) -> tuple[str, ...]:
    if not config:
        return (f"variant unknown: no config.yaml ({config_file})",)
    notes = [] if variant in PUBLISHED else [f"the study has no variant {variant!r}"]
    differs = [f"{key} {value}" for key, value in setup.items()
               if value is not None and value != SETUP[key]]
    if differs:
        notes.append("not the study's setup: " + ", ".join(differs))
    return tuple(notes)


def _pct(value: Any) -> float | None:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return None
    return 100 * value


def run_values(run: Run) -> dict[str, float | None]:
    """Row -> the run's percent (None where it has none)."""
    m = run.metrics
    accuracy = m.get("accuracy") or {}
    values = {task: _pct(accuracy.get(task)) for task in TASK_NAMES}
    values.update({"mean": _pct(m.get("mean_accuracy")), "mAP": _pct(m.get("mAP")),
                   "rank-1": _pct(m.get("rank1"))})
    return values


def majority_values(run: Run) -> dict[str, float | None]:
    """Row -> the run's majority-baseline percent (mean over the tasks it has; no mAP, rank-1)."""
    majority = run.metrics.get("majority") or {}
    values = {task: _pct(majority.get(task)) for task in TASK_NAMES}
    known = [v for v in values.values() if v is not None]
    values.update({"mean": sum(known) / len(known) if known else None, "mAP": None,
                   "rank-1": None})
    return values


def difference(value: float | None, study: float | None) -> float | None:
    """``value - study`` in percentage points, of ``value`` rounded as shown (2 decimals)."""
    if value is None or study is None:
        return None
    return round(round(value, 2) - study, 2) + 0.0  # + 0.0 turns -0.0 into 0.0


def _cell(value: float | None, sign: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.2f}" if sign else f"{value:.2f}"


def _majority_columns(runs: Sequence[Run]) -> list[tuple[str, dict[str, float | None]]]:
    """One ``majority`` column when the runs agree (as shown), else one per run that has one."""
    columns = [(run.label, majority_values(run)) for run in runs]
    columns = [(label, v) for label, v in columns if v["mean"] is not None]
    if len({tuple(_cell(v[row]) for row in ROWS) for _, v in columns}) <= 1:
        return [("majority", v) for _, v in columns[:1]]
    return [(f"majority {label}", v) for label, v in columns]


def table_rows(runs: Sequence[Run], delta: bool = False,
               study: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and rows (percent, 2 decimals): per run its number, the study's for its variant
    and with ``delta`` their difference; then the runs' majority and the study's. Without
    ``study`` (runs on another protocol) only the runs and their majority."""
    delta = delta and study
    majorities = _majority_columns(runs)
    header = ["task"]
    for run in runs:
        header += [run.title, *(["study"] if study else []), *(["Δ"] if delta else [])]
    header += [name for name, _ in majorities] + (["study majority"] if study else [])
    values = [run_values(run) for run in runs]
    rows = []
    for row in ROWS:
        cells = [row]
        for run, value in zip(runs, values):
            published_value = published(run.variant or "", row)
            cells += [_cell(value[row])] + ([_cell(published_value)] if study else [])
            cells += [_cell(difference(value[row], published_value), sign=True)] if delta else []
        cells += [_cell(v[row]) for _, v in majorities]
        cells += [_cell(published("majority", row))] if study else []
        rows.append(cells)
    return header, rows


def _verdict(name: str, value: float | None, study: float | None) -> str:
    if value is None:
        return f"no {name}"
    diff = difference(value, study)
    if study is None or diff is None:
        return f"{name} {value:.2f} (no study number)"
    word = "beats" if diff > 0 else "misses" if diff < 0 else "matches"
    return f"{name} {value:.2f} {word} the study's {study:.2f} ({diff:+.2f})"


def summary(run: Run, study: bool = True) -> str:
    """One line: which epoch, and whether the run beats or misses the study's mean accuracy
    and mAP; then its notes. Without ``study``: the epoch and the two numbers."""
    values = run_values(run)
    where = (f"best epoch {run.epoch} of {run.epochs}" if run.epoch is not None
             else "attreid evaluate")
    rows = (("mean", "mean accuracy"), ("mAP", "mAP"))
    if not study:
        return f"{run.title}, {where}: " + "; ".join(
            f"{name} {_cell(values[row])}" for row, name in rows)
    verdicts = [_verdict(name, values[row], published(run.variant or "", row))
                for row, name in rows]
    text = f"{run.title}, {where}: " + "; ".join(verdicts)
    return text + (f" ({'; '.join(run.notes)})" if run.notes else "")


def rich_table(runs: Sequence[Run], delta: bool = False, study: bool = True) -> Table:
    """The table for the terminal."""
    if not study:
        return rows_to_rich(*table_rows(runs, study=False), title="validation (%)")
    return rows_to_rich(*table_rows(runs, delta),
                        title="validation (%) beside the study's published numbers",
                        caption=f"study: {DESCRIPTION}")


def markdown(runs: Sequence[Run], delta: bool = False, study: bool = True) -> str:
    """The table as GitHub markdown, the summary line of each run and the study's setup."""
    lines = [rows_to_markdown(*table_rows(runs, delta, study)).rstrip("\n"), "",
             *(f"- {summary(run, study)}" for run in runs)]
    lines += ["", f"Study: {DESCRIPTION}."] if study else []
    return "\n".join(lines) + "\n"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _run_json(run: Run) -> dict[str, Any]:
    values, majority = run_values(run), majority_values(run)
    rows = {}
    for row in ROWS:
        study = published(run.variant or "", row)
        rows[row] = {"value": _rounded(values[row]), "study": study,
                     "delta": difference(values[row], study),
                     "majority": _rounded(majority[row])}
    return {"path": str(run.path), "label": run.label, "variant": run.variant,
            "epoch": run.epoch, "epochs": run.epochs, "rows": rows,
            "notes": list(run.notes), "summary": summary(run)}


def comparison_json(runs: Sequence[Run]) -> dict[str, Any]:
    """The comparison as JSON-ready data (percent): each run's rows (value, study, delta,
    majority), its best epoch, notes and summary, and the study's published numbers."""
    return {"unit": "percent",
            "study": {"description": DESCRIPTION, "setup": SETUP, "published": PUBLISHED},
            "runs": [_run_json(run) for run in runs]}
