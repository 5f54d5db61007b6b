"""Canonical-schema Parquet (a warehouse export, or the synthetic generator's output).

Layout: ``<path>/interactions`` (+ ``items``, ``users``), each a Parquet file or a folder of them. Values are
cast to strings before validation so a wrongly typed export is caught by the same rules as a text file.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys.datasets.base import PARSE_ERROR, RAW, SOURCE_FILE, DataConfig, RawDataset, RawTable, with_missing
from recsys.errors import InputError
from recsys.schema import EMBEDDING_SUFFIX, INTERACTIONS, ITEMS, USER_ID, USERS, TableSchema


def _parquet_files(location: Path) -> list[Path]:
    if location.is_file():
        return [location]
    return sorted(p for p in location.rglob("*.parquet") if p.is_file())


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.parquet"):
        if candidate.exists():
            return candidate
    return None


def _read_table(spark: SparkSession, location: Path, schema: TableSchema) -> tuple[DataFrame, list[Path]]:
    files = _parquet_files(location)
    if not files:
        raise InputError(f"{location}: no Parquet files for table {schema.name!r}.")
    frame = spark.read.parquet(*[str(f) for f in files])
    for column in schema.required:
        if column not in frame.columns:
            raise InputError(
                f"{location}: required column {column!r} missing; found columns {frame.columns}."
            )
    raw = F.to_json(F.struct(*[F.col(c) for c in frame.columns]))
    source = F.regexp_replace(F.col("_metadata.file_path"), "^file:", "")
    cast = [
        F.col(c)
        if c in schema.names and schema.column(c).type.endswith("_list")
        else F.col(c).cast("string").alias(c)
        for c in frame.columns
    ]
    out = frame.select(
        source.alias(SOURCE_FILE), raw.alias(RAW), F.lit(None).cast("string").alias(PARSE_ERROR), *cast
    )
    return out, files


def read_folder(spark: SparkSession, folder: Path) -> RawDataset:
    if not folder.is_dir():
        raise InputError(f"{folder}: data.path is not a readable folder.")
    inter_location = _find(folder, "interactions")
    if inter_location is None:
        raise InputError(f"{folder}: no `interactions` Parquet file or folder found.")
    inter, files = _read_table(spark, inter_location, INTERACTIONS)
    tables = {"interactions": RawTable(INTERACTIONS, with_missing(inter, INTERACTIONS), tuple(files))}
    items_location = _find(folder, "items")
    if items_location is not None:
        items, item_files = _read_table(spark, items_location, ITEMS)
        # Precomputed content vectors (optional ``*_embedding`` list<float> columns of the canonical schema,
        # docs/configuration.md) travel on.
        embeddings = tuple(c for c in items.columns if c.endswith(EMBEDDING_SUFFIX))
        tables["items"] = RawTable(ITEMS, with_missing(items, ITEMS), tuple(item_files), embeddings)
    users_location = _find(folder, "users")
    if users_location is not None:
        users, user_files = _read_table(spark, users_location, USERS)
        extra = tuple(c for c in users.columns if c not in {SOURCE_FILE, RAW, PARSE_ERROR, USER_ID})
        tables["users"] = RawTable(USERS, users, tuple(user_files), extra)
    return RawDataset(tables)


def read(spark: SparkSession, cfg: DataConfig) -> RawDataset:
    return read_folder(spark, cfg.require_path())
