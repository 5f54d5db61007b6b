"""Writing and reading stage outputs: Parquet + manifest, never one without the other."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys.errors import ManifestError
from recsys.manifest import Manifest, read_manifest, write_manifest


def schema_of(frame: DataFrame) -> list[dict[str, str]]:
    return [{"name": f.name, "type": f.dataType.simpleString()} for f in frame.schema.fields]


def write_output(
    frame: DataFrame,
    folder: Path,
    *,
    config_hash: str,
    source_fingerprint: str,
    counts: Mapping[str, int] | None = None,
    partition_by: Sequence[str] = (),
    distinct: Sequence[str] = (),
) -> Manifest:
    """Write ``frame`` as Parquet under ``folder`` (inside a stage's staging area) with its manifest.

    ``distinct`` names columns whose distinct counts go into the manifest (e.g. users, items).
    """
    writer = frame.write.mode("overwrite")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.parquet(str(folder))
    written = read_parquet(frame.sparkSession, folder)
    all_counts = dict(counts or {})
    aggregates = [F.count(F.lit(1)).alias("_rows")] + [F.countDistinct(c).alias(c) for c in distinct]
    row = written.agg(*aggregates).first()
    assert row is not None
    row_count = int(row["_rows"])
    for column in distinct:
        all_counts[f"distinct_{column}"] = int(row[column])
    manifest = Manifest(
        name=folder.name,
        row_count=row_count,
        schema=schema_of(written),
        counts=all_counts,
        config_hash=config_hash,
        source_fingerprint=source_fingerprint,
    )
    write_manifest(folder, manifest)
    return manifest


def read_output(spark: SparkSession, folder: Path) -> tuple[DataFrame, Manifest]:
    """Read a published output; its manifest must be there (the producer finished)."""
    manifest = read_manifest(folder)
    if manifest.format != "parquet":
        raise ManifestError(f"{folder}: expected Parquet output, manifest says {manifest.format!r}.")
    return read_parquet(spark, folder), manifest


def read_parquet(spark: SparkSession, folder: Path) -> DataFrame:
    """Parquet data of an output folder; the glob skips ``manifest.json`` that sits beside the data."""
    return spark.read.option("pathGlobFilter", "*.parquet").parquet(str(folder))
