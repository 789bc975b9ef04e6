"""The command line's shared base: the typer app and its sub-apps (``data``, ``index``), the
console, the error line, progress bars, and :func:`run` / :func:`main` (the entry point that
prints named errors). The command modules use these helpers; ``attreid.cli`` registers their
commands on the apps here."""

from __future__ import annotations

import errno
import os
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from attreid.errors import AttreidError
from attreid.utils.files import printable_name
from attreid.zoo import DEFAULT_MODEL

CHECKPOINT_HELP = (f"A checkpoint (best.pt), or a shipped model's name (attreid models); "
                   f"default: the shipped {DEFAULT_MODEL}.")

app = typer.Typer(help="attreid: joint pedestrian attribute recognition and person re-ID.",
                  no_args_is_help=True, add_completion=False)
data_app = typer.Typer(help="Inspect and validate datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
index_app = typer.Typer(help="Build and extend gallery search indexes.", no_args_is_help=True)
app.add_typer(index_app, name="index")
console = Console()
LAYOUTS = "auto|market|course|custom"
BACKEND_OPTION = typer.Option(
    "auto", "--backend", help="Inference backend: auto (the fastest verified on this machine "
    "among ONNX Runtime, torch bf16 and torch fp32, measured once per checkpoint and machine, "
    "printed), onnx, torch-bf16 or torch-fp32 (torch = torch-fp32). An ONNX file made by "
    "`attreid export` runs with onnx.")


def _show_backend_text(text: str) -> None:
    """Print a line about the inference backend on stderr, so that JSON on stdout stays JSON."""
    Console(stderr=True).print(text, soft_wrap=True, markup=False, highlight=False)


def _show_backend(choice: Any) -> None:
    """Print the inference backend chosen (an :class:`attreid.inference.backends.Choice`)."""
    if choice is not None:
        _show_backend_text(choice.describe())


def _shown(text: str) -> str:
    """``text`` safe to print on any terminal, line by line through
    :func:`attreid.utils.files.printable_name` (a byte of a file name that is not UTF-8 shows as
    ``\\xNN``, other lone surrogates and control characters escaped) with its line breaks kept
    (a DataError lists one problem a line); rich markup is escaped."""
    return escape("\n".join(printable_name(line) for line in text.split("\n")))


def _error(message: str) -> None:
    console.print(f"[bold red]error:[/] {_shown(message)}", highlight=False, soft_wrap=True)


def _fail(message: str) -> None:
    """Print ``message`` as the error line and exit 1; with ``ATTREID_DEBUG=1``, called while
    handling an exception, re-raise that exception instead (its traceback)."""
    if os.environ.get("ATTREID_DEBUG") and sys.exc_info()[1] is not None:
        raise
    _error(message)
    raise typer.Exit(code=1)


PROGRESS_EVERY_S = 10.0
"""Seconds between the plain progress lines written where stdout is not a terminal (on stderr:
``attreid index build ... > out.txt`` keeps its results apart; ``2>&1`` puts both in a log)."""


class _ProgressLines:
    """Plain progress lines for a log (stdout redirected, where a bar would draw nothing): the
    first update, then at most one line every :data:`PROGRESS_EVERY_S` seconds, and the last;
    ``what: 4,096/19,732 (21%), 410/s, about 38 s left``."""

    def __init__(self, description: str, stream: TextIO) -> None:
        self.description, self.stream = description, stream
        self.start = self.last = time.monotonic()
        self.shown, self.lines = -1, 0

    def __call__(self, done: int, total: int | None, extra: str = "") -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if self.shown >= 0 and not finished and now - self.last < PROGRESS_EVERY_S:
            return
        if finished and self.shown == done:
            return
        self.last, self.shown = now, done
        rate = done / max(now - self.start, 1e-9)
        text = f"{self.description}: {done:,}" + (f"/{total:,} ({done / max(total, 1):.0%})"
                                                  if total else "")
        if done and now > self.start and self.lines:  # the first rate holds the start-up
            text += f", {rate:,.0f}/s"
            if total and not finished:
                text += f", about {_duration((total - done) / max(rate, 1e-9))} left"
        self.lines += 1
        print(text + (f"  {extra}" if extra else ""), file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


@contextmanager
def _count_progress(description: str, stream: TextIO | None = None
                    ) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar on a terminal, plain lines on ``stream`` (default stderr: the
    results on stdout stay apart) where stdout is not one; yields the ``(done, total)``
    callback the library calls."""
    if not console.is_terminal:
        yield _ProgressLines(description, stream or sys.stderr)
        return
    columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def _plain_epoch_progress(epochs: int) -> Callable[[int, int, int, dict], None]:
    """Training's progress as plain lines on stderr (stdout not a terminal)."""
    lines: dict[int, _ProgressLines] = {}

    def on_step(epoch: int, step: int, steps: int, values: dict) -> None:
        if step == 0 or epoch not in lines:  # a new epoch (the demo trains three runs)
            lines[epoch] = _ProgressLines(f"epoch {epoch + 1}" + (f"/{epochs}" if epochs
                                                                  else "") + " steps",
                                          sys.stderr)
        info = "  ".join(f"{k} {v:.3f}" if k != "img/s" else f"{v:.0f} img/s"
                         for k, v in values.items())
        lines[epoch](step + 1, steps, info)

    return on_step


@contextmanager
def _epoch_progress(epochs: int, show: bool = True
                    ) -> Iterator[Callable[[int, int, int, dict], None] | None]:
    if not show:
        yield None
        return
    if not console.is_terminal:
        yield _plain_epoch_progress(epochs)
        return
    total = f"/{epochs}" if epochs else ""
    columns = (TextColumn("epoch {task.fields[epoch]}" + total), BarColumn(),
               MofNCompleteColumn(), TextColumn("{task.fields[info]}"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("train", total=None, epoch=0, info="")

        def on_step(epoch: int, step: int, steps: int, values: dict) -> None:
            if step == 0:
                bar.reset(task, total=steps)
            info = "  ".join(f"{k} {v:.3f}" if k != "img/s" else f"{v:.0f} img/s"
                             for k, v in values.items())
            bar.update(task, completed=step + 1, epoch=epoch + 1, info=info)

        yield on_step


@contextmanager
def _reported_warnings() -> Iterator[None]:
    """Collect the warnings raised in the block (e.g. skipped files) and print each after it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        console.print(f"[yellow]warning:[/] {_shown(str(w.message))}", soft_wrap=True)


_FILE_SYSTEM_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _file_system_message(exc: OSError) -> str | None:
    """One line for an error of the file system a user can act on (a path that is not a
    folder, no permission, a full or read-only disk): ``PATH: reason``; None for others."""
    if exc.filename is not None:
        paths = " -> ".join(os.fsdecode(p) for p in (exc.filename, exc.filename2) if p is not None)
        return f"{paths}: {exc.strerror or exc}"
    if exc.errno in _FILE_SYSTEM_ERRNOS:
        return f"cannot write: {exc.strerror or exc}"
    return None


def run(args: list[str] | None = None, prog_name: str | None = None) -> None:
    """Run the command line: a named error (:class:`attreid.errors.AttreidError`) or an error of
    the file system naming its path (e.g. ``--out`` under a file, permission denied, disk full)
    is printed as one paragraph with exit status 1, Ctrl-C as one line with status 130; other
    exceptions are bugs and keep their traceback. ``ATTREID_DEBUG=1`` shows the traceback of
    every error."""
    try:
        app(args, prog_name=prog_name)
    except AttreidError as exc:
        if os.environ.get("ATTREID_DEBUG"):
            raise
        _error(str(exc))
        sys.exit(1)
    except OSError as exc:
        message = _file_system_message(exc)
        if message is None or os.environ.get("ATTREID_DEBUG"):
            raise
        _error(message)
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("interrupted (a training run continues from its last epoch with "
                      "--resume)", highlight=False)
        sys.exit(130)


def main() -> None:
    """Console-script entry point."""
    run()
