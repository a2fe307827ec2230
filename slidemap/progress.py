"""Progress bars on stderr, so that stdout stays clean for results.

They are drawn only on a terminal: quiet in tests, logs and pipes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress


def track(items: Iterable, description: str, total: int | None = None) -> Iterator:
    """Iterate ``items``, with a transient bar while an interactive terminal watches."""
    import sys

    if not sys.stderr.isatty():
        yield from items
        return
    from rich.console import Console
    from rich.progress import track as rich_track

    yield from rich_track(items, total=total, description=description, console=Console(stderr=True),
                          transient=True)


def bar(unit: str | None = None, transient: bool = True) -> Progress:
    """A ``rich.progress.Progress`` to add tasks to, silent off a terminal.

    ``unit`` (e.g. ``"km²"``) shows completed/total in that unit with elapsed and remaining time, instead
    of rich's default columns.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    console = Console(stderr=True)
    columns = () if unit is None else (
        TextColumn("{task.description}"), BarColumn(),
        TextColumn("{task.completed:,.2f}/{task.total:,.2f} " + unit), TimeElapsedColumn(),
        TimeRemainingColumn())
    return Progress(*columns, console=console, transient=transient, disable=not console.is_terminal)
