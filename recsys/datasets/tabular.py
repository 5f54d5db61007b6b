"""``format: table``: your own interaction log (and optional item and user files) as CSV or Parquet, mapped
to the canonical columns by name in the data config (``conf/data/csv.yaml`` is the template).

CSV files are read as real exports come: Spark's CSV reader with multi-line records, so quoted fields may
hold the delimiter, doubled quotes and line breaks; ``\\n`` and ``\\r\\n`` line endings; any charset Java
decodes (``encoding: cp1252``, ``latin1``, ``utf-16``); a UTF-8 byte-order mark (spreadsheet exports) is
dropped from the first column name. Everything is read as text; types, nulls, ranges and duplicates are
checked by ``features.validate`` like every other format, and the timestamps' plausibility for the declared
unit by ``features.ingest``.
"""

from __future__ import annotations

import difflib
import glob
import re
from collections.abc import Mapping
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys.datasets.base import PARSE_ERROR, RAW, SOURCE_FILE, RawDataset, RawTable, tokens, with_missing
from recsys.errors import ConfigError, InputError
from recsys.schema import (
    CATEGORIES,
    EVENT_TYPE,
    INTERACTIONS,
    ITEM_ID,
    ITEMS,
    RATING,
    TEXT,
    TIMESTAMP,
    TITLE,
    USER_ID,
    USERS,
)
from recsys.settings import DataConfig, ItemFileConfig, TableDataConfig, UserFileConfig

BOM = "\ufeff"
# timestamp_unit for text dates and times (ISO 8601, or data.timestamp_format): converted to epoch seconds.
DATETIME_UNIT = "datetime"
_CATEGORY_TEXT = "_categories_text"


def _files(folder: Path, pattern: str, what: str) -> list[Path]:
    """The files ``pattern`` names: a file, a folder (every file in it, hidden ones skipped) or a glob."""
    location = Path(pattern).expanduser()
    location = location if location.is_absolute() else folder / location
    if location.is_dir():
        found = sorted(p for p in location.iterdir() if p.is_file() and not p.name.startswith((".", "_")))
    else:
        found = sorted(Path(p) for p in glob.glob(str(location)) if Path(p).is_file())
    if not found:
        raise InputError(f"{location}: no {what} found (data.path={folder}, pattern {pattern!r}).")
    empty = [p for p in found if p.stat().st_size == 0]
    if empty:
        raise InputError(f"{empty[0]}: {what} is empty.")
    return found


def _read(spark: SparkSession, files: list[Path], cfg: TableDataConfig) -> DataFrame:
    paths = [str(p) for p in files]
    if cfg.file_format == "parquet":
        frame = spark.read.parquet(*paths)
    else:
        frame = (
            spark.read.option("header", cfg.header)
            .option("sep", cfg.delimiter)
            .option("quote", cfg.quote)
            .option("escape", cfg.escape)
            .option("encoding", cfg.encoding)
            .option("multiLine", True)
            .option("mode", "PERMISSIVE")
            .option("inferSchema", False)
            .csv(paths)
        )
        # A spreadsheet's UTF-8 export starts with a byte-order mark, which ends up in the first name.
        frame = frame.toDF(*[c.lstrip(BOM).strip() for c in frame.columns])
    return frame.withColumn(SOURCE_FILE, F.regexp_replace(F.col("_metadata.file_path"), "^file:", ""))


def _require_columns(frame: DataFrame, files: list[Path], wanted: Mapping[str, str | None], key: str) -> None:
    """Every mapped column is in the file; a missing one is named with the closest header names."""
    header = [c for c in frame.columns if c != SOURCE_FILE]
    for canonical, name in wanted.items():
        if name is not None and name not in header:
            close = difflib.get_close_matches(name, header, n=3)
            hint = f"; did you mean {close}?" if close else ""
            raise InputError(
                f"{files[0]}: column {name!r} (data.{key}.{canonical}) is not in the file; its columns are "
                f"{header}{hint}"
            )


def _as_text(frame: DataFrame, name: str) -> Column:
    """A column as the text validation parses, whatever type a Parquet file gave it."""
    return F.col(f"`{name}`").cast("string")


def _timestamp(frame: DataFrame, name: str, cfg: TableDataConfig) -> Column:
    """Epoch seconds as text for ``timestamp_unit: datetime`` (and for Parquet timestamp columns); the value
    as written otherwise, divided by its unit in validation. A text that does not parse as a date stays as
    written, so validation reports it with the row."""
    dtype = frame.schema[name].dataType
    column = F.col(f"`{name}`")
    if isinstance(dtype, T.TimestampType | T.TimestampNTZType | T.DateType):
        if cfg.timestamp_unit != DATETIME_UNIT:
            raise ConfigError(
                f"data.columns.timestamp={name!r} is a {dtype.simpleString()} column: set "
                f"data.timestamp_unit=datetime (it is {cfg.timestamp_unit!r})."
            )
        return F.unix_timestamp(column.cast("timestamp")).cast("string")
    if cfg.timestamp_unit != DATETIME_UNIT:
        return _as_text(frame, name)
    text = F.trim(column.cast("string"))
    parsed = F.try_to_timestamp(text, F.lit(cfg.timestamp_format)) if cfg.timestamp_format else None
    seconds = F.unix_timestamp(parsed if parsed is not None else F.try_to_timestamp(text))
    return F.coalesce(seconds.cast("string"), text)


def _record_columns(frame: DataFrame, delimiter: str) -> list[Column]:
    """The columns every raw table starts with: its file, the record as read (its fields joined by the
    delimiter, for error messages) and no parse error (the CSV reader already split the fields)."""
    header = [c for c in frame.columns if c != SOURCE_FILE]
    raw = F.concat_ws(delimiter, *[F.coalesce(_as_text(frame, n), F.lit("")) for n in header])
    return [F.col(SOURCE_FILE), raw.alias(RAW), F.lit(None).cast("string").alias(PARSE_ERROR)]


def _interactions(spark: SparkSession, folder: Path, cfg: TableDataConfig) -> RawTable:
    files = _files(folder, cfg.interactions, "interaction file")
    frame = _read(spark, files, cfg)
    mapping = {
        USER_ID: cfg.columns.user_id,
        ITEM_ID: cfg.columns.item_id,
        TIMESTAMP: cfg.columns.timestamp,
        RATING: cfg.columns.rating,
        EVENT_TYPE: cfg.columns.event_type,
    }
    _require_columns(frame, files, mapping, "columns")
    columns: list[Column] = [
        *_record_columns(frame, cfg.delimiter),
    ]
    for canonical, name in mapping.items():
        if name is None:
            continue
        value = _timestamp(frame, name, cfg) if canonical == TIMESTAMP else _as_text(frame, name)
        columns.append(value.alias(canonical))
    return RawTable(INTERACTIONS, with_missing(frame.select(*columns), INTERACTIONS), tuple(files))


def _items(spark: SparkSession, folder: Path, cfg: TableDataConfig, item_file: ItemFileConfig) -> RawTable:
    files = _files(folder, item_file.path, "item file")
    frame = _read(spark, files, cfg)
    mapping = {
        ITEM_ID: item_file.item_id,
        TITLE: item_file.title,
        CATEGORIES: item_file.categories,
        TEXT: item_file.text,
    }
    _require_columns(frame, files, mapping, "items")
    columns: list[Column] = [
        *_record_columns(frame, cfg.delimiter),
        _as_text(frame, item_file.item_id).alias(ITEM_ID),
    ]
    if item_file.title is not None:
        columns.append(_as_text(frame, item_file.title).alias(TITLE))
    if item_file.categories is not None:
        frame = frame.withColumn(_CATEGORY_TEXT, _as_text(frame, item_file.categories))
        # tokens() splits on a regex; the separator in the config is literal text.
        columns.append(tokens(_CATEGORY_TEXT, re.escape(item_file.categories_separator)).alias(CATEGORIES))
    if item_file.text is not None:
        columns.append(_as_text(frame, item_file.text).alias(TEXT))
    return RawTable(ITEMS, with_missing(frame.select(*columns), ITEMS), tuple(files))


def _users(spark: SparkSession, folder: Path, cfg: TableDataConfig, user_file: UserFileConfig) -> RawTable:
    files = _files(folder, user_file.path, "user file")
    frame = _read(spark, files, cfg)
    wanted: dict[str, str | None] = {USER_ID: user_file.user_id}
    wanted.update({a: a for a in cfg.user_attributes})
    _require_columns(frame, files, wanted, "users")
    columns: list[Column] = [
        *_record_columns(frame, cfg.delimiter),
        _as_text(frame, user_file.user_id).alias(USER_ID),
        *[_as_text(frame, a).alias(a) for a in cfg.user_attributes],
    ]
    return RawTable(USERS, frame.select(*columns), tuple(files), tuple(cfg.user_attributes))


def read(spark: SparkSession, cfg: DataConfig) -> RawDataset:
    assert isinstance(cfg, TableDataConfig), "format: table is read with TableDataConfig (DATA_SCHEMAS)"
    folder = cfg.require_path()
    tables = {"interactions": _interactions(spark, folder, cfg)}
    if cfg.items is not None:
        tables["items"] = _items(spark, folder, cfg, cfg.items)
    if cfg.users is not None:
        tables["users"] = _users(spark, folder, cfg, cfg.users)
    return RawDataset(tables)
