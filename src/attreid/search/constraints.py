"""Query values and their checks: attribute constraints (``task=value``), k, offset, min_prob
and pooling several query crops into one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping

import numpy as np

from attreid.errors import AttreidError
from attreid.schema import TASKS

_TASKS = {t.name: t for t in TASKS}


class QueryError(AttreidError, ValueError):
    """A query is malformed: unknown attribute or value, bad k, unknown image id."""


@dataclass(frozen=True)
class Constraint:
    """``task == value`` with probability >= the query's ``min_prob``."""

    task: str
    value: str

    @property
    def column(self) -> str:
        return f"p_{self.task}_{self.value}"


def _constraint(task: str, value: str) -> Constraint:
    task, value = str(task).strip(), str(value).strip()
    if task not in _TASKS:
        raise QueryError(f"unknown attribute {task!r}; expected one of {list(_TASKS)}")
    classes = _TASKS[task].classes
    if value not in classes:
        raise QueryError(f"attribute {task!r}: unknown value {value!r}; expected one of "
                         f"{list(classes)}")
    return Constraint(task, value)


def json_object(text: str, field: str, shape: str = "") -> dict:
    """``text`` parsed as a JSON object.

    Raises:
        QueryError: invalid JSON, or JSON that is not an object; both name ``field`` (and the
            ``shape`` expected, e.g. `` {task: value}``).
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise QueryError(f"{field}: invalid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise QueryError(f"{field}: expected a JSON object{shape}")
    return value


def parse_attributes(spec: str | Mapping[str, str] | None) -> list[Constraint]:
    """Constraints from ``"gender=female,backpack=yes"``, a JSON object or a mapping.

    Raises:
        QueryError: unknown attribute or value, a pair without ``=``, or a task given twice.
    """
    if spec is None:
        return []
    if isinstance(spec, str):
        text = spec.strip()
        if not text:
            return []
        if text.startswith("{"):
            spec = json_object(text, "attributes", " {task: value}")
        else:
            pairs = [p for p in text.split(",") if p.strip()]
            if any("=" not in p for p in pairs):
                raise QueryError(f"attributes {text!r}: expected task=value pairs separated "
                                 "by commas, e.g. gender=female,backpack=yes")
            items = [p.split("=", 1) for p in pairs]
            tasks = [t.strip() for t, _ in items]
            dupes = sorted({t for t in tasks if tasks.count(t) > 1})
            if dupes:
                raise QueryError(f"attributes: {dupes} given more than once")
            spec = {t.strip(): v for t, v in items}
    return [_constraint(task, value) for task, value in spec.items()]


def check_min_prob(min_prob: float) -> float:
    if not 0.0 <= float(min_prob) <= 1.0:
        raise QueryError(f"min_prob={min_prob}: expected a probability in [0, 1]")
    return float(min_prob)


def pool_vectors(vectors: np.ndarray) -> np.ndarray:
    """One query from the embeddings (N, D) of N crops of one person: their mean (D,)."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim != 2 or not len(v):
        raise QueryError("no query crop to pool")
    return v.mean(axis=0)


def check_offset(offset: int) -> int:
    if int(offset) < 0:
        raise QueryError(f"offset={offset}: expected 0 or more")
    return int(offset)


def check_k(k: int) -> int:
    if int(k) < 1:
        raise QueryError(f"k={k}: expected at least 1")
    return int(k)


