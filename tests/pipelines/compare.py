"""Compare two runs' published outputs table by table (row order is not part of the contract)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from recsys.tables import read_arrow


def sorted_rows(folder: Path) -> list[str]:
    return sorted(repr(row) for row in read_arrow(folder).to_pylist())


def output_folders(stage: Path) -> list[str]:
    return sorted(p.name for p in stage.iterdir() if (p / "manifest.json").is_file())


def assert_same_tables(left: Path, right: Path) -> list[str]:
    """Every output with a manifest under ``left`` exists under ``right`` with the same rows."""
    names = output_folders(left)
    assert names, f"{left}: no outputs"
    assert names == output_folders(right)
    for name in names:
        assert sorted_rows(left / name) == sorted_rows(right / name), f"{name} differs"
    return names


def metric_table(folder: Path) -> pd.DataFrame:
    table: pd.DataFrame = read_arrow(folder / "metrics").to_pandas()
    return table.sort_values(["split", "metric", "k", "bucket"]).reset_index(drop=True)


def candidates(folder: Path) -> dict[Any, list[Any]]:
    rows = read_arrow(folder).to_pylist()
    return {row["user_id"]: list(row["item_ids"]) for row in rows}
