"""What every input adapter hands to validation: raw, untyped rows tied to their file and line.

Adapters only parse structure (fields, JSON). Types, nulls, ranges and duplicates are checked in one place
(``features.validate``) so every format gets the same rules and the same quarantine reasons.

Frame contract of :class:`RawTable` (one row per input record):
    ``_source_file`` string   the file the record came from
    ``_raw``         string   the record as read (a line, a JSON object), shown in error messages
    ``_parse_error`` string   null, or why the record's structure is broken (field count, malformed JSON)
    canonical scalar columns  strings, exactly as in the file (null or "" when absent)
    canonical list columns    arrays of strings (e.g. ``categories``)
    ``extra_columns``         further string columns kept as-is (user attributes)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys.errors import InputError
from recsys.schema import TableSchema
from recsys.settings import DataConfig as DataConfig  # the `data` schema; adapters import it from here

SOURCE_FILE = "_source_file"
RAW = "_raw"
PARSE_ERROR = "_parse_error"
UTF8 = {"utf-8", "utf8"}


@dataclass(frozen=True)
class RawTable:
    """One input table before validation. See the module docstring for the frame contract."""

    schema: TableSchema
    frame: DataFrame
    files: tuple[Path, ...]
    extra_columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class RawDataset:
    """The tables an adapter found: ``interactions`` (+ ``items``, ``users``), or ``ctr_events`` (Criteo)."""

    tables: Mapping[str, RawTable]

    @property
    def files(self) -> list[Path]:
        return sorted({f for t in self.tables.values() for f in t.files})


Adapter = Callable[[SparkSession, DataConfig], RawDataset]


def require_file(path: Path, what: str) -> Path:
    """The file must exist, be a regular file, be readable and hold at least one byte."""
    if not path.exists():
        raise InputError(f"{path}: {what} not found.")
    if not path.is_file():
        raise InputError(f"{path}: {what} is not a regular file.")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: {what} is not readable (permission denied).")
    try:
        with path.open("rb") as handle:
            first = handle.read(1)
    except OSError as exc:
        raise InputError(f"{path}: {what} cannot be read ({exc.strerror}).") from exc
    if not first:
        raise InputError(f"{path}: {what} is empty.")
    return path


def read_lines(spark: SparkSession, files: Sequence[Path], encoding: str) -> DataFrame:
    """Lines of text files as ``_source_file``, ``_raw``; blank lines are dropped.

    UTF-8 goes through Spark's text source. Other encodings go through the CSV source with quoting off and
    a separator that never occurs in text, because only the CSV source decodes charsets.
    """
    paths = [str(f) for f in files]
    if encoding.lower() in UTF8:
        frame = spark.read.text(paths).withColumnRenamed("value", RAW)
    else:
        frame = (
            spark.read.option("encoding", encoding)
            .option("sep", "\u0001")
            .option("quote", "")
            .option("escape", "")
            .option("ignoreLeadingWhiteSpace", "false")
            .option("ignoreTrailingWhiteSpace", "false")
            .schema(f"{RAW} string")
            .csv(paths)
        )
    frame = frame.withColumn(SOURCE_FILE, F.regexp_replace(F.col("_metadata.file_path"), "^file:", ""))
    return frame.where(F.trim(F.col(RAW)) != "").select(SOURCE_FILE, RAW)


def first_line(path: Path, encoding: str) -> str:
    with path.open(encoding=encoding, errors="replace") as handle:
        return handle.readline().rstrip("\r\n")


def drop_line(frame: DataFrame, line: str) -> DataFrame:
    """Remove header lines (every file of a multi-file input repeats the header)."""
    return frame.where(F.col(RAW) != F.lit(line))


def split_fields(frame: DataFrame, pattern: str, names: Sequence[str | None]) -> DataFrame:
    """Split ``_raw`` by a regex into named string columns; a wrong field count is a parse error.

    ``names`` lists every expected field in order; ``None`` marks a field that is read but not kept.
    """
    parts = F.split(F.col(RAW), pattern, -1)
    expected = len(names)
    error = F.when(
        F.size(parts) != expected,
        F.format_string(f"expected {expected} fields, found %d", F.size(parts)),
    )
    columns: list[Column] = [F.col(SOURCE_FILE), F.col(RAW), error.alias(PARSE_ERROR)]
    columns += [F.trim(parts.getItem(i)).alias(n) for i, n in enumerate(names) if n is not None]
    return frame.select(*columns)


def blank_to_null(column: str) -> Column:
    return F.when(F.trim(F.col(column)) == "", F.lit(None)).otherwise(F.col(column))


def tokens(column: str, pattern: str) -> Column:
    """A delimited string as an array of non-empty trimmed tokens (empty array for null)."""
    parts = F.split(F.coalesce(F.col(column), F.lit("")), pattern, -1)
    return F.filter(F.transform(parts, lambda t: F.trim(t)), lambda t: t != "")


def with_missing(frame: DataFrame, schema: TableSchema) -> DataFrame:
    """Add canonical columns the format does not have, as nulls (or empty arrays for lists)."""
    for column in schema.columns:
        if column.name in frame.columns:
            continue
        value = (
            F.array().cast("array<string>") if column.type.endswith("_list") else F.lit(None).cast("string")
        )
        frame = frame.withColumn(column.name, value)
    return frame
