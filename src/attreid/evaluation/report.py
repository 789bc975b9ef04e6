"""The study-style results table: per-task accuracy and mAP per variant, majority beside them."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from rich.markup import escape
from rich.table import Table

from attreid.schema import TASK_NAMES


def table_rows(results: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (percent, 2 decimals) of the study's table.

    Args:
        results: variant name -> validation metrics as returned by
            :func:`attreid.training.validation.validate` (``mAP``, ``rank1``; ``accuracy``,
            ``mean_accuracy``, ``majority`` when the data has attribute labels). A task without
            labels, or data without any, shows "-".
    """
    variants = list(results)
    majority = next((r["majority"] for r in results.values() if r.get("majority")), {})
    gaps = (results[variants[0]].get("majority_gap") or {}) if len(variants) == 1 else {}
    header = ["task", *variants, "majority"] + (["vs majority (95 % CI)"] if gaps else [])
    rows = []
    for task in TASK_NAMES:
        rows.append([task, *(_pct((results[v].get("accuracy") or {}).get(task))
                             for v in variants), _pct(majority.get(task))]
                    + ([_gap(gaps.get(task))] if gaps else []))
    known = [majority[t] for t in TASK_NAMES if majority.get(t) is not None]
    rows.append(["mean", *(_pct(results[v].get("mean_accuracy")) for v in variants),
                 _pct(sum(known) / len(known) if known else None)])
    rows[-1] += [""] if gaps else []
    rows.append(["mAP", *(_pct(results[v]["mAP"]) for v in variants), "-"] + [""] * bool(gaps))
    rows.append(["rank-1", *(_pct(results[v]["rank1"]) for v in variants), "-"]
                + [""] * bool(gaps))
    return header, rows


def _gap(gap: Mapping[str, Any] | None) -> str:
    """Accuracy minus majority and its interval, in points; ✗ when the head is no better."""
    if gap is None:
        return "-"
    return (f"{100 * (gap['accuracy'] - gap['majority']):+.2f} [{100 * gap['low']:+.1f}, "
            f"{100 * gap['high']:+.1f}]" + ("" if gap["better"] else " ✗"))


def flag_caption(results: Mapping[str, Mapping[str, Any]]) -> str | None:
    """What ✗ means when a head of a single result is no better than its majority class, and
    where the majority came from when the train set had no labels; None when nothing to say."""
    if len(results) != 1:
        return None
    only = next(iter(results.values()))
    weak = [t for t, g in (only.get("majority_gap") or {}).items() if not g["better"]]
    notes = ([f"✗ no better than the majority class (the 95 % bootstrap interval over "
              f"identities does not lie above 0): {', '.join(weak)}; with a calibration (attreid "
              "calibrate) search shows their values as uncertain"] if weak else [])
    if only.get("majority_of", "train") != "train":
        notes.append(f"majority: of the evaluated labels ({only['majority_of']}: the train set "
                     "has none), the best any constant answer could do")
    return "\n".join(notes) or None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def rows_to_rich(header: Sequence[str], rows: Sequence[Sequence[str]], title: str,
                 caption: str | None = None) -> Table:
    """A table for the terminal: first column left, the others right-aligned; no column is
    narrower than its longest cell or header word, so numbers are never cut to "7…"."""
    table = Table(title=title, caption=caption)
    for i, name in enumerate(header):
        widest = max(*(len(row[i]) for row in rows), *map(len, name.split()))
        table.add_column(escape(name), justify="left" if i == 0 else "right", min_width=widest,
                         overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def rows_to_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """The same table as GitHub markdown."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def rich_table(results: Mapping[str, Mapping[str, Any]], title: str) -> Table:
    """The study-style table of ``results`` for the terminal; its caption says when no task
    had attribute labels (a re-ID-only dataset)."""
    labelled = any(r.get("accuracy") for r in results.values())
    caption = flag_caption(results) if labelled else "no attribute labels in this data: re-ID only"
    return rows_to_rich(*table_rows(results), title=title, caption=caption)


def markdown_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The study-style table of ``results`` as GitHub markdown."""
    return rows_to_markdown(*table_rows(results))
