"""``attreid case`` (new, list, mark, note, show, export): the investigator's case from the
command line, in the same case file the search page uses (``INDEX.cases.sqlite`` beside the
index); and ``attreid timeline``: where else a person is, in time order across cameras."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from attreid.cli.base import _fail, _show_backend_text, console
from attreid.cli.search import CALIBRATION_HELP, FPIR_HELP, _search_errors

case_app = typer.Typer(help="The investigator's case: sightings marked right or wrong, notes, "
                       "and a report to hand over.", no_args_is_help=True)

INDEX_ARG = typer.Argument(..., help="The index folder (its cases live beside it, in "
                           "INDEX.cases.sqlite).")
NAME_ARG = typer.Argument(..., help="The case's name.")


def _print_table(table: Table) -> None:
    """On a terminal at its width; into a file or pipe at 160 columns (times and paths whole)."""
    if console.is_terminal:
        console.print(table)
    else:
        Console(width=max(console.width, 160)).print(table)


def _errors() -> tuple[type[Exception], ...]:
    from attreid.case import CaseError

    return (CaseError, *_search_errors())


def _store(index: Path) -> Any:
    from attreid.case import CaseStore
    from attreid.search.workspace import case_file

    if not (index / "meta.sqlite").is_file():
        from attreid.search import GalleryIndexError

        raise GalleryIndexError(f"{index}: not an index folder (no meta.sqlite); make one with "
                                "attreid index build or attreid ingest")
    return CaseStore(case_file(index))


def _open(index: Path, calibration: Path | None = None, fpir: float = 0.01) -> Any:
    from attreid.search.service import open_search

    return open_search(index, None, None, "auto", calibration, model=False, fpir=fpir)


def case_new(index: Path = INDEX_ARG, name: str = NAME_ARG,
             calibration: Path | None = typer.Option(None, "--calibration",
                                                     help=CALIBRATION_HELP)) -> None:
    """Open a new case on an index; it records the model, calibration and operating point."""
    try:
        from attreid.search.workspace import work_context

        store = _store(index)
        case = store.create(name, work_context(_open(index, calibration)))
    except _errors() as exc:
        _fail(str(exc))
    console.print(f"case {case.name!r} opened in {store.path}", markup=False,
                  highlight=False, soft_wrap=True)


def case_list(index: Path = INDEX_ARG) -> None:
    """The cases of an index, oldest first, with their counts."""
    try:
        store = _store(index)
        cases = [store.get(n) for n in store.names()]
    except _errors() as exc:
        _fail(str(exc))
    if not cases:
        console.print(f"no case yet in {store.path} (attreid case new)", markup=False,
                      highlight=False)
    for c in cases:
        console.print(f"{c.name}: {len(c.confirmed())} confirmed, {len(c.rejected())} rejected, "
                      f"{len(c.notes)} note(s); opened {c.created}", markup=False,
                      highlight=False, soft_wrap=True)


def case_mark(index: Path = INDEX_ARG, name: str = NAME_ARG,
              ids: list[int] = typer.Argument(..., help="Indexed crop id(s)."),
              right: bool = typer.Option(False, "--right", help="The person."),
              wrong: bool = typer.Option(False, "--wrong", help="Not the person."),
              clear: bool = typer.Option(False, "--clear", help="Take the mark away."),
              note: str = typer.Option("", "--note", help="Why.")) -> None:
    """Mark indexed crops right (the person) or wrong (not the person), or clear their mark."""
    try:
        from attreid.search.workspace import snapshot

        if sum((right, wrong, clear)) != 1:
            raise typer.BadParameter("give one of --right, --wrong, --clear")
        store, search = _store(index), _open(index)
        store.get(name)  # an unknown case before any work
        # every id checked before any is marked: all of them or none
        shots = [snapshot(search, i, {"query": "attreid case mark"}) for i in ids]
        changed = 0
        for shot in shots:
            if clear:
                changed += store.unmark(name, shot["path"])
            else:
                store.mark(name, shot, "right" if right else "wrong", note)
                changed += 1
    except typer.BadParameter as exc:
        _fail(str(exc))
    except _errors() as exc:
        _fail(str(exc))
    done = "cleared" if clear else ("right" if right else "wrong")
    console.print(f"{changed} sighting(s) {done} in case '{name}'" + (
        f" ({len(ids) - changed} had no mark)" if clear and changed < len(ids) else ""),
        markup=False, highlight=False)


def case_note(index: Path = INDEX_ARG, name: str = NAME_ARG,
              text: str = typer.Argument(..., help="The note.")) -> None:
    """Add a note to a case (kept with its time)."""
    try:
        _store(index).add_note(name, text)
    except _errors() as exc:
        _fail(str(exc))
    console.print(f"note added to case {name!r}", markup=False, highlight=False)


def case_show(index: Path = INDEX_ARG, name: str = NAME_ARG,
              as_json: bool = typer.Option(False, "--json", help="Print the case as JSON.")
              ) -> None:
    """The case: the confirmed sightings in time order (camera by camera), then the rejected."""
    try:
        from attreid.case import case_json

        case = _store(index).get(name)
    except _errors() as exc:
        _fail(str(exc))
    record = case_json(case)
    if as_json:
        print(json.dumps(record, indent=1, ensure_ascii=False))
        return
    for title, rows in (("timeline (confirmed)", record["timeline"]),
                        ("rejected", record["rejected"])):
        table = Table(title=f"{case.name}: {title}", box=box.SIMPLE)
        for column in ("time", "camera", "frame", "track", "id", "note"):
            table.add_column(column, no_wrap=column != "note", min_width=len(column))
        table.add_column("crop", overflow="fold", min_width=20)
        for s in rows:
            camera = s.get("camera_name") or s.get("camera")
            table.add_row(*(escape(str("" if v is None else v)) for v in (
                s.get("time") or "no clock", camera, s.get("frame"), s.get("track"), s.get("id"),
                s.get("note"), s.get("path"))))
        _print_table(table)
    for n in case.notes:
        console.print(f"note {n['at']}: {n['text']}", markup=False, highlight=False,
                      soft_wrap=True)


def case_export(index: Path = INDEX_ARG, name: str = NAME_ARG,
                out: Path = typer.Option(Path("."), "--out", help="Folder to write into.")
                ) -> None:
    """Write the case as NAME.html (self-contained: every crop and frame inside), NAME.csv and
    NAME.json (full paths, times, cameras, boxes, marks)."""
    try:
        from attreid.case import export_case

        paths = export_case(_store(index).get(name), out)
    except OSError as exc:
        _fail(f"{out}: cannot write the report ({exc.strerror or exc})")
    except _errors() as exc:
        _fail(str(exc))
    for path in paths:
        console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)


def timeline(index: Path = INDEX_ARG,
             query_id: int | None = typer.Option(None, "--id", help="The indexed crop of the "
                                                 "person."),
             image: list[Path] = typer.Option([], "--image", help="A crop of the person "
                                              "(repeat for several)."),
             max_distance: float | None = typer.Option(None, "--max-distance", help="Count "
                                                       "every crop this near (default: those the "
                                                       "calibrated operating point marks)."),
             depth: int = typer.Option(2000, "--depth", min=1, help="Nearest crops looked at."),
             as_json: bool = typer.Option(False, "--json", help="Print the query and the visits "
                                          "as JSON."),
             case: str = typer.Option("", "--case", help="Record this query in the case "
                                      "(attreid case new)."),
             calibration: Path | None = typer.Option(None, "--calibration",
                                                     help=CALIBRATION_HELP),
             fpir: float = typer.Option(0.01, "--fpir", min=1e-6, help=FPIR_HELP)) -> None:
    """Where else is this person: every crop of them in the whole index, as visits (one per
    track) in time order across cameras."""
    try:
        from attreid.search.query import QueryError, pool_vectors
        from attreid.search.service import open_search
        from attreid.search.timeline import counting_rule, lanes, where_else

        if query_id is not None and image:
            raise QueryError("give --id or --image, not both")
        if query_id is None and not image:
            raise QueryError("give --id or --image")
        store = _store(index) if case else None
        if store is not None:
            store.get(case)  # an unknown case before the search
        search = open_search(index, None, None, "auto", calibration, model=bool(image),
                             fpir=fpir)
        vector = (search.index.vector(query_id) if query_id is not None
                  else pool_vectors(search.embed_many(list(image))))
        found, looked = where_else(search, vector, query_id, depth, max_distance)
        if store is not None:
            store.add_query(case, "where else", {
                "query": f"indexed crop #{query_id}" if query_id is not None else
                ", ".join(str(p.absolute()) for p in image), "max_distance": max_distance,
                "visits": len(found)})
        query = search.index.entries([query_id])[0] if query_id is not None else None
    except KeyError as exc:
        _fail(str(exc.args[0]))
    except _errors() as exc:
        _fail(str(exc))
    rule = counting_rule(search, max_distance)
    if as_json:
        from attreid.search.hits import Hit

        as_dicts = lambda hits: [h.as_dict() for h in hits]  # noqa: E731
        print(json.dumps({"query": None if query is None else as_dicts([Hit(query, 0.0, None)])[0],
                          "looked_at": looked, "rule": rule,
                          "visits": [v.as_dict(as_dicts) for v in found]}, indent=1))
        return
    _show_backend_text(f"looked at the {looked:,} nearest crops; counted: {rule}")
    table = Table(box=box.SIMPLE)
    for column in ("from", "to", "camera", "frames", "crops", "best id", "P(same)"):
        table.add_column(column, no_wrap=True, min_width=len(column))
    table.add_column("crop", overflow="fold", min_width=20)
    if query is not None:  # the query first
        from attreid.search.sightings import iso_time

        when = "no clock" if query.time is None else iso_time(query.time)
        table.add_row(*(escape(str(x)) for x in (
            f"query {when}", "", query.camera_name or query.camera, query.frame, 1, query.id,
            "", query.display_name)))
    for v in found:
        d = v.as_dict(lambda hits: [])
        p = v.best.probability
        frames = "" if d["first_frame"] is None else f"{d['first_frame']}-{d['last_frame']}"
        table.add_row(*(escape(str(x)) for x in (
            d["start"] or "no clock", d["end"] or "", v.camera, frames, len(v.hits), d["best"],
            "" if p is None else f"{100 * p:.1f} %", v.best.entry.display_name)))
    _print_table(table)
    console.print(f"{len(found)} visit(s) in {len(lanes(found))} camera(s)", markup=False,
                  highlight=False)
