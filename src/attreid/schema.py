"""The attribute schema of Market-1501_Attribute, defined once.

Two views of the same identity-level annotation:

* **raw view** — what the files hold: ``age`` (1..4) and 26 binary attributes coded 1/2
  (1 = no / male / short hair / long sleeve / long lower body / dress,
  2 = yes / female / long hair / short sleeve / short lower body / pants).
* **task view** — the study's 12 prediction tasks, as 0-based class indices:
  age (4), backpack, bag, handbag, clothes, down, up, hair, hat, gender (2 each),
  upcolor (9: eight colours + multicolour), downcolor (10: nine colours + multicolour).

Colour rule: a colour group with no colour set is *multicolour* (78 train identities of
Market-1501 have no upper colour). More than one colour set in a group is ambiguous and raises
:class:`AttributeCodeError` naming the identity. A task whose label is unknown (custom datasets
may annotate only some attributes) is :data:`MISSING` (-1) and is ignored by losses and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from attreid.errors import AttreidError

MISSING = -1
"""Task label of an unknown attribute."""

AGE_CLASSES: tuple[str, ...] = ("young", "teenager", "adult", "old")
UP_COLORS: tuple[str, ...] = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
DOWN_COLORS: tuple[str, ...] = (
    "black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown",
)
MULTICOLOUR = "multicolour"

# Binary raw attributes with the meaning of code 1 and code 2, in the order of the study's tasks.
BINARY_MEANINGS: dict[str, tuple[str, str]] = {
    "backpack": ("no", "yes"),
    "bag": ("no", "yes"),
    "handbag": ("no", "yes"),
    "clothes": ("dress", "pants"),
    "down": ("long", "short"),
    "up": ("long", "short"),
    "hair": ("short", "long"),
    "hat": ("no", "yes"),
    "gender": ("male", "female"),
}
BINARY_ATTRIBUTES: tuple[str, ...] = tuple(BINARY_MEANINGS)
UP_COLOR_COLUMNS: tuple[str, ...] = tuple("up" + c for c in UP_COLORS)
DOWN_COLOR_COLUMNS: tuple[str, ...] = tuple("down" + c for c in DOWN_COLORS)

RAW_ATTRIBUTES: tuple[str, ...] = (
    ("age",) + BINARY_ATTRIBUTES + UP_COLOR_COLUMNS + DOWN_COLOR_COLUMNS
)
"""The 27 raw columns (age + 26 binary) in the order of the study's ``annotations_train.csv``."""

CSV_COLUMNS: tuple[str, ...] = ("id",) + RAW_ATTRIBUTES
"""The 28 columns of the course layout's ``annotations_train.csv``."""


@dataclass(frozen=True)
class Task:
    """One prediction task of the task view."""

    name: str
    classes: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def is_binary(self) -> bool:
        """Binary tasks are predicted with one logit (BCE); the others with softmax (CE)."""
        return len(self.classes) == 2

    @property
    def num_outputs(self) -> int:
        """Width of the model head: 1 logit for a binary task, else one per class."""
        return 1 if self.is_binary else len(self.classes)


TASKS: tuple[Task, ...] = (
    (Task("age", AGE_CLASSES),)
    + tuple(Task(name, meaning) for name, meaning in BINARY_MEANINGS.items())
    + (
        Task("upcolor", UP_COLORS + (MULTICOLOUR,)),
        Task("downcolor", DOWN_COLORS + (MULTICOLOUR,)),
    )
)
"""The study's 12 tasks, in its order."""

TASK_NAMES: tuple[str, ...] = tuple(t.name for t in TASKS)
NUM_TASKS = len(TASKS)


class AttributeCodeError(AttreidError, ValueError):
    """A raw attribute value is out of range or a colour group is ambiguous."""


def _check_code(name: str, value: int, where: str) -> None:
    allowed = (1, 2, 3, 4) if name == "age" else (1, 2)
    if value not in allowed:
        raise AttributeCodeError(
            f"{where}: attribute {name!r} has value {value!r}, expected one of {allowed}"
        )


def _group(columns: Sequence[str]) -> str:
    return "upcolor" if columns[0].startswith("up") else "downcolor"


def _colour_label(raw: Mapping[str, int], columns: Sequence[str], where: str) -> int:
    present = [c for c in columns if c in raw]
    if not present:
        return MISSING
    if len(present) != len(columns):
        missing = [c for c in columns if c not in raw]
        raise AttributeCodeError(
            f"{where}: colour group {_group(columns)} is partial, missing columns {missing} "
            "(give all columns of a colour group or none)"
        )
    set_idx = [i for i, c in enumerate(columns) if raw[c] == 2]
    if len(set_idx) > 1:
        names = [columns[i] for i in set_idx]
        raise AttributeCodeError(
            f"{where}: more than one colour set in one group: {names} (expected at most one; "
            "none set means multicolour)"
        )
    return set_idx[0] if set_idx else len(columns)  # len(columns) = index of multicolour


def raw_to_tasks(raw: Mapping[str, int], where: str = "attributes") -> np.ndarray:
    """Convert raw codes (any subset of :data:`RAW_ATTRIBUTES`) to 12 task labels.

    Args:
        raw: column name -> code (age 1..4, others 1/2). Absent columns are unknown.
        where: names the identity/row in error messages.

    Returns:
        int64 array (12,) of 0-based class indices, :data:`MISSING` where unknown.
    """
    unknown = set(raw) - set(RAW_ATTRIBUTES)
    if unknown:
        raise AttributeCodeError(f"{where}: unknown attribute columns {sorted(unknown)}")
    for name, value in raw.items():
        _check_code(name, int(value), where)
    labels = np.full(NUM_TASKS, MISSING, dtype=np.int64)
    for i, task in enumerate(TASKS[:10]):
        if task.name in raw:
            labels[i] = int(raw[task.name]) - 1
    labels[10] = _colour_label(raw, UP_COLOR_COLUMNS, where)
    labels[11] = _colour_label(raw, DOWN_COLOR_COLUMNS, where)
    return labels


def tasks_to_raw(labels: Sequence[int]) -> dict[str, int]:
    """Inverse of :func:`raw_to_tasks` for fully known labels: 12 task labels -> 27 raw codes.

    Multicolour writes every colour column of its group as 1 (no colour set).
    """
    labels = [int(v) for v in labels]
    if len(labels) != NUM_TASKS:
        raise ValueError(f"expected {NUM_TASKS} task labels, got {len(labels)}")
    raw: dict[str, int] = {}
    for task, value in zip(TASKS, labels):
        if not 0 <= value < task.num_classes:
            raise ValueError(
                f"task {task.name!r}: label {value} outside 0..{task.num_classes - 1}"
            )
    for task, value in zip(TASKS[:10], labels[:10]):
        raw[task.name] = value + 1
    for columns, value in ((UP_COLOR_COLUMNS, labels[10]), (DOWN_COLOR_COLUMNS, labels[11])):
        for i, column in enumerate(columns):
            raw[column] = 2 if i == value else 1
    return {name: raw[name] for name in RAW_ATTRIBUTES}


def describe(labels: Sequence[int]) -> dict[str, str]:
    """Human-readable class names of 12 task labels (``"?"`` where unknown)."""
    return {
        task.name: (task.classes[int(v)] if int(v) != MISSING else "?")
        for task, v in zip(TASKS, labels)
    }


def trained_tasks_of(recorded: object) -> tuple[str, ...]:
    """The tasks a model was trained on, in the order of :data:`attreid.schema.TASK_NAMES`,
    from what a checkpoint (``trained_tasks``), an ONNX export or a search index recorded.
    ``None`` (made before the record existed) means all 12 tasks.

    Raises:
        ValueError: not a list of task names, or an unknown name.
    """
    if recorded is None:
        return TASK_NAMES
    if isinstance(recorded, (str, bytes)) or not isinstance(recorded, (list, tuple)) or \
            not all(isinstance(name, str) for name in recorded):
        raise ValueError(f"trained_tasks: expected a list of task names, got {recorded!r}")
    unknown = sorted(set(recorded) - set(TASK_NAMES))
    if unknown:
        raise ValueError(f"trained_tasks: unknown task(s) {unknown}; expected names of "
                         f"{list(TASK_NAMES)}")
    return tuple(name for name in TASK_NAMES if name in recorded)


def labelled_tasks(targets: np.ndarray) -> tuple[str, ...]:
    """The tasks with at least one known label in ``targets`` ((N, 12) task labels,
    :data:`MISSING` where unknown), in the order of :data:`TASK_NAMES`: what a model trained
    on those labels records as its ``trained_tasks``."""
    known = (np.asarray(targets).reshape(-1, NUM_TASKS) != MISSING).any(axis=0)
    return tuple(name for name, k in zip(TASK_NAMES, known) if k)
