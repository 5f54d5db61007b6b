"""Ingest job: raw files -> validated canonical tables + quarantine, published as one stage.

Thresholds are per table: when the share of bad rows exceeds ``features.validation.max_bad_fraction`` the
job raises :class:`~recsys.errors.ValidationError` naming the file, the column and an example line, and
nothing is published.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from rich.markup import escape

from features.io import write_output
from features.validate import (
    COLUMN,
    REASON,
    RULE,
    ValidationRules,
    bad_rows,
    check_timestamps,
    flag_rows,
    good_rows,
)
from recsys.console import console
from recsys.datasets import read_dataset
from recsys.datasets.base import RAW, SOURCE_FILE
from recsys.errors import InputError, ValidationError
from recsys.manifest import Manifest, config_hash, fingerprint_files, publish_atomically
from recsys.schema import ITEM_ID, TIMESTAMP, USER_ID
from recsys.settings import data_config

QUARANTINE = "quarantine"


@dataclass(frozen=True)
class Problem:
    """Bad rows of one kind (rule + column) in one table, with one example."""

    table: str
    rule: str
    column: str
    count: int
    example_file: str
    example_line: str
    example_reason: str


@dataclass
class TableReport:
    table: str
    files: list[str]
    rows_read: int
    rows_bad: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def bad_fraction(self) -> float:
        return self.rows_bad / self.rows_read if self.rows_read else 0.0


@dataclass
class IngestResult:
    stage_dir: Path
    tables: list[TableReport]
    manifests: dict[str, Manifest]


def _problems(flagged: DataFrame, table: str) -> list[Problem]:
    failures = flagged.where(F.col("_failure").isNotNull())
    example = F.min(F.struct(F.col(SOURCE_FILE), F.col(RAW), F.col(f"_failure.{REASON}")))
    rows = (
        failures.groupBy(F.col(f"_failure.{RULE}").alias(RULE), F.col(f"_failure.{COLUMN}").alias(COLUMN))
        .agg(F.count(F.lit(1)).alias("n"), example.alias("example"))
        .orderBy(F.desc("n"), RULE, COLUMN)
        .collect()
    )
    return [
        Problem(table, r[RULE], r[COLUMN], int(r["n"]), r["example"][0], r["example"][1], r["example"][2])
        for r in rows
    ]


def _fail(report: TableReport, limit: float) -> ValidationError:
    worst = report.problems[0]
    return ValidationError(
        f"{worst.example_file}: {report.rows_bad} of {report.rows_read} rows of table {report.table!r} "
        f"({report.bad_fraction:.1%}) failed validation, above the limit of {limit:.1%} "
        f"(features.validation.max_bad_fraction). Most frequent problem: {worst.count} rows, "
        f"rule {worst.rule!r}, column {worst.column!r} ({worst.example_reason}); example line: "
        f"{worst.example_line!r}. Nothing was published."
    )


def _check_timestamps(frame: DataFrame, rules: ValidationRules, table: str, files: list[str]) -> None:
    """A unit that puts the timestamps centuries away stops ingest when another unit fits (a
    milliseconds export declared as seconds); when none fits it is reported, not silently accepted."""
    check = check_timestamps(frame, rules)
    if check is None or check.plausible:
        return
    where = f"{', '.join(files)}: table {table!r}, column 'timestamp'"
    if check.fitting_unit is not None:
        raise ValidationError(f"{where}: {check.describe()}. Nothing was published.")
    console.print(f"[yellow]warning:[/yellow] {escape(where)}: {escape(check.describe())}.", soft_wrap=True)


def run_ingest(spark: SparkSession, cfg: dict[str, Any], stage: Path) -> IngestResult:
    """Read ``cfg['data']``, validate every table, and publish ``stage`` (or raise, publishing nothing)."""
    data_cfg = data_config(cfg["data"])
    limit = float(cfg["features"]["validation"]["max_bad_fraction"])
    rules = ValidationRules(data_cfg.timestamp_unit, data_cfg.rating_min, data_cfg.rating_max)
    dataset = read_dataset(spark, data_cfg, Path(cfg["paths"]["root"]), int(cfg["seed"]))
    fingerprint = fingerprint_files(dataset.files)
    digest = config_hash({"data": cfg["data"], "validation": cfg["features"]["validation"]})

    flagged: dict[str, DataFrame] = {}
    reports: list[TableReport] = []
    try:
        for name, raw in dataset.tables.items():
            frame = flag_rows(raw, rules).persist(StorageLevel.MEMORY_AND_DISK)
            flagged[name] = frame
            rows_read = frame.count()
            files = [str(f) for f in raw.files]
            if rows_read == 0:
                raise InputError(f"{', '.join(files)}: no data rows in table {name!r} (empty input).")
            problems = _problems(frame, name)
            report = TableReport(name, files, rows_read, sum(p.count for p in problems), problems)
            reports.append(report)
            if report.bad_fraction > limit:
                raise _fail(report, limit)
            if TIMESTAMP in raw.schema.names:
                _check_timestamps(frame, rules, name, files)

        manifests: dict[str, Manifest] = {}
        with publish_atomically(stage) as staging:
            quarantine: DataFrame | None = None
            for name, raw in dataset.tables.items():
                distinct = [c for c in (USER_ID, ITEM_ID) if c in raw.schema.names]
                manifests[name] = write_output(
                    good_rows(flagged[name], raw),
                    staging / name,
                    config_hash=digest,
                    source_fingerprint=fingerprint,
                    distinct=distinct,
                )
                bad = bad_rows(flagged[name], name)
                quarantine = bad if quarantine is None else quarantine.unionByName(bad)
            assert quarantine is not None
            counts = {f"{r.table}/{p.rule}/{p.column}": p.count for r in reports for p in r.problems}
            manifests[QUARANTINE] = write_output(
                quarantine.coalesce(1),
                staging / QUARANTINE,
                config_hash=digest,
                source_fingerprint=fingerprint,
                counts=counts,
            )
        return IngestResult(stage, reports, manifests)
    finally:
        for frame in flagged.values():
            frame.unpersist()
