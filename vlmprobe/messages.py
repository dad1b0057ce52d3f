"""How vlmprobe talks: ``logging`` for messages (one logger per module, under "vlmprobe") and
rich progress bars for long work, both on standard error. Results (tables, listings, paths) are
the caller's to print: the CLI prints them on standard output.

Nothing is shown until asked: the CLI calls :func:`show_messages`; in a notebook call it too (or
configure ``logging`` yourself); progress bars show unless a stage is called with
``progress=False``.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

console = Console(stderr=True)


class _ConsoleHandler(logging.Handler):
    """One unwrapped line per message (paths stay whole and greppable) in the console the
    progress bars use, so neither garbles the other; warnings say so, in colour."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            warn = record.levelno >= logging.WARNING
            console.print((f"{record.levelname.lower()}: " if warn else "") + self.format(record),
                          style="yellow" if warn else None, soft_wrap=True, markup=False,
                          highlight=False)
        except Exception:  # noqa: BLE001 - logging's contract: a failed message never raises
            self.handleError(record)


def show_messages(level: int | str = "INFO") -> None:
    """Show vlmprobe's messages (and, where captured, Python warnings) at ``level`` and above on
    standard error. Calling it again only changes the level."""
    for name in ("vlmprobe", "py.warnings"):  # the latter: warnings, once captured into logging
        logger = logging.getLogger(name)
        if not any(isinstance(h, _ConsoleHandler) for h in logger.handlers):
            logger.addHandler(_ConsoleHandler())
    logging.getLogger("vlmprobe").setLevel(level)


@contextlib.contextmanager
def progress_bar(description: str, total: int, unit: str = "img",
                 enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; shows done/total, rate in ``unit``/s and ETA."""
    if not enabled:
        yield lambda n=1: None
        return
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            bar.advance(task, n)
            speed = bar.tasks[task].speed
            if speed:
                bar.update(task, rate=f"{speed:6.1f} {unit}/s")

        yield advance
