"""Progress bars for long audits: on a terminal only, never in JSON-log mode."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import Progress


class Bar(Protocol):
    """What a long step reports to: ``advance(n)`` after each piece of work."""

    def advance(self, amount: int = 1) -> None:
        """Count ``amount`` more units done."""


class _Silent:
    def advance(self, amount: int = 1) -> None:
        """Nothing to show."""


class _Rich:
    def __init__(self, progress: Progress, total: int, what: str) -> None:
        self.progress = progress
        self.task = progress.add_task(what, total=total)

    def advance(self, amount: int = 1) -> None:
        self.progress.advance(self.task, amount)


def enabled(log_json: bool) -> bool:
    """Whether bars are shown: stderr is a terminal and logs are not JSON."""
    return not log_json and sys.stderr.isatty()


@contextmanager
def bar(what: str, total: int, show: bool) -> Iterator[Bar]:
    """A bar for ``total`` units of ``what`` (a silent one when ``show`` is False)."""
    if not show:
        yield _Silent()
        return
    # rich is imported for a bar only: a command whose output is not a terminal never needs it
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        yield _Rich(progress, total, what)


__all__ = ["Bar", "bar", "enabled"]
