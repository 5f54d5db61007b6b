"""Output shared by every command: progress on stderr (``console``), results on stdout (``results``: the
summary tables and the paths of what was written), so ``recsys ... > summary.txt`` keeps what matters.

Piped or redirected, rich would wrap at 80 columns and crop table cells with an ellipsis: the results
console is wide then (``$COLUMNS`` or :data:`PIPED_WIDTH`) and table cells fold instead of cropping, so a
path is always printed whole.
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


def _piped_width() -> int | None:
    if sys.stdout.isatty():
        return None
    return int(os.environ.get("COLUMNS", PIPED_WIDTH))


console = Console(stderr=True, highlight=False)
results = Console(highlight=False, width=_piped_width())


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
