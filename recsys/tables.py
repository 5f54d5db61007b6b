"""Reading published outputs without Spark (models, evaluation, tests): Arrow over the Parquet files.

An output folder holds ``manifest.json`` beside the data, possibly hive-partitioned (``split=train/``), so
the Parquet files are listed explicitly instead of letting a reader guess what in the folder is data.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from recsys.errors import ManifestError
from recsys.manifest import read_manifest


def parquet_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.parquet") if p.is_file() and not p.name.startswith((".", "_")))


def read_arrow(folder: Path, columns: list[str] | None = None) -> pa.Table:
    """All rows of a published output (manifest required), with hive partition columns restored."""
    manifest = read_manifest(folder)
    files = parquet_files(folder)
    if not files and manifest.row_count:
        raise ManifestError(
            f"{folder}: manifest says {manifest.row_count} rows but there are no Parquet files."
        )
    if not files:
        return pa.table({})
    dataset = ds.dataset(
        [str(f) for f in files],
        format="parquet",
        partitioning=ds.partitioning(flavor="hive"),
        partition_base_dir=str(folder),
    )
    return dataset.to_table(columns=columns)
