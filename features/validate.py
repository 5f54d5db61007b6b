"""Row-level validation shared by every input format.

Each raw row gets at most one failure, the first that applies in this order:
``parse`` (structure: field count, malformed JSON) -> ``null`` (required column empty) -> ``type``
(value does not parse as the column's type) -> ``range`` (rating outside the configured stars, label not
0/1, negative timestamp) -> ``duplicate`` (same key as an earlier row; the first row by file and content is
kept). Failing rows go to quarantine with the rule, the column and a human-readable reason.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys.datasets.base import PARSE_ERROR, RAW, SOURCE_FILE, RawTable
from recsys.schema import LABEL, RATING, TIMESTAMP, TableSchema

RULE = "rule"
COLUMN = "column"
REASON = "reason"
_FAILURE = "_failure"
QUARANTINE_COLUMNS = ("table", "source_file", "raw", RULE, COLUMN, REASON)
# Divisor from each data.timestamp_unit to seconds; "datetime" text was converted to seconds by its adapter.
_UNIT_DIVISOR = {"s": 1, "ms": 1000, "us": 1_000_000, "ns": 1_000_000_000, "datetime": 1}


@dataclass(frozen=True)
class ValidationRules:
    """Per-dataset checks: timestamp unit of the files and the valid rating range (None = unchecked)."""

    timestamp_unit: str = "s"
    rating_min: float | None = None
    rating_max: float | None = None

    def __post_init__(self) -> None:
        if self.timestamp_unit not in _UNIT_DIVISOR:
            raise ValueError(
                f"timestamp_unit must be one of {sorted(_UNIT_DIVISOR)}, got {self.timestamp_unit!r}"
            )


def _blank(column: str) -> Column:
    return F.col(column).isNull() | (F.trim(F.col(column).cast("string")) == "")


def _failure(rule: str, column: str, message: Column) -> Column:
    return F.struct(
        F.lit(rule).alias(RULE), F.lit(column).alias(COLUMN), message.cast("string").alias(REASON)
    )


def _typed(column: str, kind: str, rules: ValidationRules) -> Column:
    raw = F.trim(F.col(column))
    if kind == "string":
        return F.when(raw != "", raw)
    if kind == "double":
        return raw.try_cast("double")
    if kind == "int":
        number = raw.try_cast("double")
        return F.when(number == F.floor(number), number.cast("int"))
    if kind == "long" and column == TIMESTAMP:
        return F.floor(raw.try_cast("double") / _UNIT_DIVISOR[rules.timestamp_unit]).cast("long")
    if kind == "long":
        return raw.try_cast("long")
    return F.coalesce(
        F.col(column), F.array().cast(f"array<{'string' if kind == 'string_list' else 'double'}>")
    )


def _range_checks(schema: TableSchema, rules: ValidationRules) -> list[tuple[str, Column, str]]:
    checks: list[tuple[str, Column, str]] = []
    names = set(schema.names)
    if RATING in names and rules.rating_min is not None and rules.rating_max is not None:
        value = F.col(f"_t_{RATING}")
        outside = value.isNotNull() & (
            value.isNaN() | (value < rules.rating_min) | (value > rules.rating_max)
        )
        checks.append((RATING, outside, f"rating outside [{rules.rating_min}, {rules.rating_max}]"))
    if LABEL in names:
        checks.append(
            (LABEL, F.col(f"_t_{LABEL}").isNotNull() & ~F.col(f"_t_{LABEL}").isin(0, 1), "label not 0 or 1")
        )
    if TIMESTAMP in names:
        checks.append((TIMESTAMP, F.col(f"_t_{TIMESTAMP}") < 0, "negative timestamp"))
    return checks


def flag_rows(raw: RawTable, rules: ValidationRules) -> DataFrame:
    """Typed canonical columns + extra columns + a ``_failure`` struct (null for good rows)."""
    schema = raw.schema
    frame = raw.frame
    for column in schema.columns:
        frame = frame.withColumn(f"_t_{column.name}", _typed(column.name, column.type, rules))

    failures: list[Column] = [
        F.when(F.col(PARSE_ERROR).isNotNull(), _failure("parse", "_line", F.col(PARSE_ERROR)))
    ]
    for name in schema.required:
        failures.append(F.when(_blank(name), _failure("null", name, F.lit(f"{name} is empty"))))
    for column in schema.columns:
        if column.type.endswith("_list"):
            continue
        bad_type = ~_blank(column.name) & F.col(f"_t_{column.name}").isNull()
        message = F.concat(
            F.lit(f"{column.name} is not a {column.type}: "), F.col(column.name).cast("string")
        )
        failures.append(F.when(bad_type, _failure("type", column.name, message)))
    for name, condition, text in _range_checks(schema, rules):
        message = F.concat(F.lit(f"{text}: "), F.col(name).cast("string"))
        failures.append(F.when(condition, _failure("range", name, message)))
    failure = F.coalesce(*failures)
    frame = frame.withColumn(_FAILURE, failure)

    if schema.key:
        ok = F.col(_FAILURE).isNull()
        window = Window.partitionBy(ok, *[F.col(f"_t_{k}") for k in schema.key]).orderBy(SOURCE_FILE, RAW)
        key_text = ", ".join(schema.key)
        duplicate = _failure("duplicate", key_text, F.lit(f"duplicate ({key_text}) of an earlier row"))
        frame = frame.withColumn(
            _FAILURE, F.when(ok & (F.row_number().over(window) > 1), duplicate).otherwise(F.col(_FAILURE))
        )

    typed = [F.col(f"_t_{c.name}").alias(c.name) for c in schema.columns]
    extra = [F.trim(F.col(c)).alias(c) for c in raw.extra_columns]
    return frame.select(SOURCE_FILE, RAW, _FAILURE, *typed, *extra)


def good_rows(flagged: DataFrame, raw: RawTable) -> DataFrame:
    return flagged.where(F.col(_FAILURE).isNull()).select(*raw.schema.names, *raw.extra_columns)


def bad_rows(flagged: DataFrame, table: str) -> DataFrame:
    return flagged.where(F.col(_FAILURE).isNotNull()).select(
        F.lit(table).alias("table"),
        F.col(SOURCE_FILE).alias("source_file"),
        F.col(RAW).alias("raw"),
        F.col(f"{_FAILURE}.{RULE}").alias(RULE),
        F.col(f"{_FAILURE}.{COLUMN}").alias(COLUMN),
        F.col(f"{_FAILURE}.{REASON}").alias(REASON),
    )


# Timestamps of any real interaction log fall between these (UTC): 1980-01-01 and 2100-01-01.
PLAUSIBLE_SECONDS = (315_532_800, 4_102_444_800)


@dataclass(frozen=True)
class TimestampCheck:
    """Where the median valid timestamp lands with the declared unit, and which unit would be plausible."""

    unit: str
    median_seconds: int
    example_line: str
    fitting_unit: str | None

    @property
    def plausible(self) -> bool:
        return PLAUSIBLE_SECONDS[0] <= self.median_seconds <= PLAUSIBLE_SECONDS[1]

    def describe(self) -> str:
        found = f"read as {self.unit!r} their median is {_date(self.median_seconds)}"
        outside = f"outside {_date(PLAUSIBLE_SECONDS[0])}..{_date(PLAUSIBLE_SECONDS[1])}"
        if self.fitting_unit is None:
            return f"{found}, {outside}, and no other unit fits (example line: {self.example_line!r})"
        raw = self.median_seconds * _UNIT_DIVISOR[self.unit]
        fixed = _date(raw // _UNIT_DIVISOR[self.fitting_unit])
        return (
            f"{found}, {outside}; as {self.fitting_unit!r} it is {fixed}: set "
            f"data.timestamp_unit={self.fitting_unit} (example line: {self.example_line!r})"
        )


def _date(seconds: int) -> str:
    days = seconds // 86_400
    if not -700_000 < days < 2_900_000:  # beyond the years datetime can show
        return f"{seconds} s after 1970"
    return str(datetime.date(1970, 1, 1) + datetime.timedelta(days=int(days)))


def check_timestamps(flagged: DataFrame, rules: ValidationRules) -> TimestampCheck | None:
    """The median valid timestamp against :data:`PLAUSIBLE_SECONDS`; None without valid rows.

    A median, not every row: one wrong unit moves every timestamp by a factor of 1000, while single odd
    rows are the data's own business (negative ones are already refused row by row)."""
    good = flagged.where(F.col(_FAILURE).isNull() & F.col(TIMESTAMP).isNotNull())
    row = good.agg(
        F.percentile_approx(F.col(TIMESTAMP), 0.5).alias("median"), F.min(F.col(RAW)).alias("example")
    ).first()
    if row is None or row["median"] is None:
        return None
    median = int(row["median"])
    raw = median * _UNIT_DIVISOR[rules.timestamp_unit]
    fitting = [
        unit
        for unit, divisor in _UNIT_DIVISOR.items()
        if unit not in (rules.timestamp_unit, "datetime")
        and PLAUSIBLE_SECONDS[0] <= raw // divisor <= PLAUSIBLE_SECONDS[1]
    ]
    return TimestampCheck(rules.timestamp_unit, median, str(row["example"]), fitting[0] if fitting else None)
