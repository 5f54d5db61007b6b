"""Output shared by every command: progress on stderr (``console``), results on stdout (``results``: the
summary tables and the paths of what was written), so ``recsys ... > summary.txt`` keeps what matters.

Piped or redirected, rich would wrap at 80 columns and crop table cells with an ellipsis: the results
console is wide then (:data:`PIPED_WIDTH`, or a wider ``$COLUMNS``) and table cells fold instead of
cropping, so a path is always printed whole.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.table import Table

PIPED_WIDTH = 200
# The process's own stdout, not whatever ``sys.stdout`` is at print time: while a rich progress display
# runs (Lightning's bar, a status spinner) ``sys.stdout`` is redirected into it, on stderr.
_STDOUT = sys.__stdout__ or sys.stdout


def _piped_width() -> int | None:
    """None (the terminal's width) on a terminal; piped, at least :data:`PIPED_WIDTH`: a ``COLUMNS`` that a
    parent process exported for its own terminal (pytest exports 80) must not narrow a file's tables."""
    if _STDOUT.isatty():
        return None
    columns = os.environ.get("COLUMNS", "")
    return max(int(columns) if columns.isdigit() else 0, PIPED_WIDTH)


console = Console(stderr=True, highlight=False)
results = Console(file=_STDOUT, highlight=False, width=_piped_width())


@contextmanager
def step(description: str) -> Iterator[None]:
    """Spinner while a long step runs, then one line with its duration."""
    start = time.perf_counter()
    with console.status(f"{description} ..."):
        yield
    console.print(f"[green]✓[/green] {description} [dim]({time.perf_counter() - start:.1f}s)[/dim]")


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A summary table on stdout; long cells (paths) fold onto more lines, never cropped."""
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[str(v) for v in row])
    results.print(table)


def print_result(text: str) -> None:
    """One result line (where outputs went) on stdout, never wrapped."""
    results.print(text, soft_wrap=True, markup=False)
