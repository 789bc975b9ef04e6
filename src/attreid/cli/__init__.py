"""The ``attreid`` command line. Configuration is read here and passed on as plain arguments.

One module per command group: :mod:`~attreid.cli.data` (synth, data summary / check, demo),
:mod:`~attreid.cli.training` (train), :mod:`~attreid.cli.evaluation` (evaluate, compare),
:mod:`~attreid.cli.verification` (calibrate, verify), :mod:`~attreid.cli.inference` (predict,
export) and :mod:`~attreid.cli.search` (index build / add / export, search, serve),
:mod:`~attreid.cli.footage` (ingest), :mod:`~attreid.cli.case` (case, timeline),
:mod:`~attreid.cli.models` (models: the shipped models). :mod:`~attreid.cli.base` holds the
typer app, the console and helpers they share, and :func:`run` / :func:`main`. The commands
are registered below, in the order ``attreid --help`` lists them; ``app``, ``run`` and ``main``
(the console script) are importable from here."""

from __future__ import annotations

from attreid.cli import (
    case,
    data,
    evaluation,
    footage,
    inference,
    models,
    search,
    training,
    verification,
)
from attreid.cli.base import app, data_app, index_app, main, run

__all__ = ["app", "main", "run"]

app.command()(data.synth)
app.command()(training.train)
app.command()(evaluation.evaluate)
app.command()(inference.predict)
app.command()(evaluation.compare)
app.command()(verification.calibrate)
app.command()(verification.verify)
app.command()(data.demo)
app.command()(inference.export)
app.command()(search.search)
app.command()(search.serve)
app.command()(footage.ingest)
app.command()(case.timeline)
app.command()(models.models)
app.add_typer(case.case_app, name="case")
for _name in ("new", "list", "mark", "note", "show", "export"):
    case.case_app.command(_name)(getattr(case, f"case_{_name}"))
data_app.command("summary")(data.data_summary)
data_app.command("check")(data.data_check)
index_app.command("build")(search.index_build)
index_app.command("add")(search.index_add)
index_app.command("export")(search.index_export)
