"""Run the real ingest / features jobs from tests and read their outputs back as Python rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from features.build import FeaturesResult, run_features
from features.ingest import IngestResult, run_ingest
from recsys.paths import RunPaths
from recsys.tables import read_arrow


def ingest(spark: SparkSession, cfg: dict[str, Any]) -> IngestResult:
    return run_ingest(spark, cfg, RunPaths.from_cfg(cfg).ingest)


def ingest_and_features(spark: SparkSession, cfg: dict[str, Any]) -> tuple[IngestResult, FeaturesResult]:
    ingested = ingest(spark, cfg)
    return ingested, run_features(spark, cfg, ingested.stage_dir, RunPaths.from_cfg(cfg).features)


def rows(folder: Path, sort_by: list[str] | None = None) -> list[dict[str, Any]]:
    table = read_arrow(folder)
    if sort_by:
        table = table.sort_by([(c, "ascending") for c in sort_by])
    found: list[dict[str, Any]] = table.to_pylist()
    return found
