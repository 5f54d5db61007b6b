"""Run-folder layout: ``<root>/<run.date>/<stage>/<output>/``."""

from __future__ import annotations

import re
from pathlib import Path

from recsys.errors import ConfigError

_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def run_dir(root: str | Path, date: str) -> Path:
    if not _DATE.match(str(date)):
        raise ConfigError(f"run.date must look like YYYY-MM-DD, got {date!r}.")
    return Path(root) / str(date)


def stage_dir(root: str | Path, date: str, stage: str) -> Path:
    return run_dir(root, date) / stage


def earlier_runs(root: str | Path, date: str) -> list[Path]:
    """Run folders under ``root`` dated strictly before ``date``, newest first."""
    base = Path(root)
    if not base.is_dir():
        return []
    dates = sorted(
        (p for p in base.iterdir() if p.is_dir() and _DATE.match(p.name) and p.name < date), reverse=True
    )
    return dates
