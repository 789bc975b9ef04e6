"""``attreid models``: the models shipped inside the package, with their scores, and one
model's card (``--info NAME``)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.table import Table

from attreid.cli.base import _fail, console
from attreid.zoo import ZooError, resolve_checkpoint, shipped_model, shipped_models

HEADLINE = (("mAP", "mAP"), ("rank-1", "R1"), ("mINP", "mINP"),
            ("mAP re-ranked", "mAP rr"), ("12-task accuracy", "acc"), ("mA", "mA"),
            ("TAR@FAR=1e-3", "TAR@1e-3"))
"""The scores the list shows: (key in the card's ``scores``, column title)."""


def models(
    info: str | None = typer.Option(None, "--info", help="Print one model's card."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """The models shipped with attreid (loaded by name wherever a checkpoint is taken, e.g.
    ``attreid predict market1501 --data crops/``) and their Market-1501 scores."""
    try:
        found = shipped_models() if info is None else {info: shipped_model(info)}
    except ZooError as exc:
        _fail(str(exc))
    if as_json:
        print(json.dumps({name: {"file": str(m.path), "sha256": m.sha256,
                                 "summary": m.summary, **m.card}
                          for name, m in found.items()}, indent=1))
        return
    if info is not None:
        try:
            resolve_checkpoint(info)  # the file on disk is the one the card describes
        except ZooError as exc:
            _fail(str(exc))
        _print_card(found[info])
        return
    if not found:
        console.print("no model is shipped with this installation")
        return
    table = Table(title="shipped models (Market-1501 test, standard protocol, %)")
    table.add_column("name", no_wrap=True, min_width=max(len(n) for n in found))
    for _, title in HEADLINE:
        table.add_column(title, justify="right", no_wrap=True)
    for name, model in found.items():
        scores = model.card.get("scores", {})
        table.add_row(name, *[_number(scores.get(key)) for key, _ in HEADLINE])
    console.print(table)
    for name, model in found.items():
        console.print(f"{name}: {model.summary}", markup=False, highlight=False)
    console.print("attreid models --info NAME: the model card (data, licence, command, "
                  "machine, sha256, all scores)", markup=False, highlight=False)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)


def _print_card(model: Any) -> None:
    say = lambda text: console.print(text, markup=False, highlight=False,  # noqa: E731
                                     soft_wrap=True)
    say(f"{model.name}: {model.summary}")
    say(f"file    {model.path}")
    say(f"sha256  {model.sha256} (the file matches; checked at every load)")
    if model.calibration_path:
        say(f"calibration  {model.calibration_path}")
    for line in _lines(model.card):
        say(line)


def _lines(value: Any, indent: int = 0) -> list[str]:
    """A card's nested fields as indented ``key: value`` lines."""
    pad = "  " * indent
    if isinstance(value, dict):
        out: list[str] = []
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                out += [f"{pad}{key}:"] + _lines(item, indent + 1)
            else:
                out.append(f"{pad}{key}: {_number(item)}")
        return out
    if isinstance(value, list):
        return [line for item in value for line in _lines(item, indent)] \
            if any(isinstance(i, (dict, list)) for i in value) else \
            [f"{pad}{_number(item)}" for item in value]
    return [f"{pad}{_number(value)}"]
