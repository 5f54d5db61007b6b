"""GroupLens MovieLens releases in their original layouts.

* ml-100k: ``u.data`` (tab), ``u.item`` (``|``, latin-1, 19 genre flags), ``u.user`` (``|``)
* ml-1m / ml-10m: ``ratings.dat``, ``movies.dat`` (genres ``A|B``), ``users.dat`` (1m only), ``::`` separated
* ml-20m / ml-25m / ml-latest(-small): ``ratings.csv``, ``movies.csv`` with headers and quoted titles
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys.datasets.base import (
    PARSE_ERROR,
    RAW,
    SOURCE_FILE,
    DataConfig,
    RawDataset,
    RawTable,
    drop_line,
    first_line,
    read_lines,
    require_file,
    split_fields,
    tokens,
    with_missing,
)
from recsys.errors import InputError
from recsys.schema import (
    CATEGORIES,
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

_USER_FIELDS_100K = (USER_ID, "age", "gender", "occupation", "zip_code")
_USER_FIELDS_DAT = (USER_ID, "gender", "age", "occupation", "zip_code")
_RATING_FIELDS = (USER_ID, ITEM_ID, RATING, TIMESTAMP)
# Splits on commas outside double quotes (RFC 4180 titles such as "American President, The (1995)").
_CSV_SPLIT = ',(?=(?:[^"]*"[^"]*")*[^"]*$)'


def _interactions(frame: DataFrame, path: Path) -> RawTable:
    return RawTable(INTERACTIONS, with_missing(frame, INTERACTIONS), (path,))


def _items(frame: DataFrame, path: Path) -> RawTable:
    return RawTable(ITEMS, with_missing(frame, ITEMS), (path,))


def _users(frame: DataFrame, path: Path) -> RawTable:
    extra = tuple(c for c in frame.columns if c not in {SOURCE_FILE, RAW, PARSE_ERROR, USER_ID})
    return RawTable(USERS, frame, (path,), extra)


def read_100k(spark: SparkSession, cfg: DataConfig) -> RawDataset:
    folder = cfg.require_path()
    genres = [str(g) for g in cfg.options["genres"]]
    data = require_file(folder / "u.data", "rating file")
    tables = {
        "interactions": _interactions(
            split_fields(read_lines(spark, [data], cfg.encoding), "\t", _RATING_FIELDS), data
        )
    }

    item_path = folder / "u.item"
    if item_path.exists():
        require_file(item_path, "item file")
        flags = [f"_g{i}" for i in range(len(genres))]
        names = [ITEM_ID, TITLE, "release_date", None, None, *flags]
        items = split_fields(read_lines(spark, [item_path], cfg.encoding), r"\|", names)
        chosen = F.filter(
            F.array(*[F.when(F.col(f) == "1", F.lit(g)) for f, g in zip(flags, genres, strict=True)]),
            lambda g: g.isNotNull(),
        )
        text = F.when(
            F.col("release_date") != "", F.concat(F.lit("Released "), F.col("release_date"))
        ).otherwise("")
        tables["items"] = _items(
            items.select(
                SOURCE_FILE, RAW, PARSE_ERROR, ITEM_ID, TITLE, chosen.alias(CATEGORIES), text.alias(TEXT)
            ),
            item_path,
        )

    user_path = folder / "u.user"
    if user_path.exists():
        require_file(user_path, "user file")
        tables["users"] = _users(
            split_fields(read_lines(spark, [user_path], cfg.encoding), r"\|", _USER_FIELDS_100K), user_path
        )
    return RawDataset(tables)


def read_dat(spark: SparkSession, cfg: DataConfig) -> RawDataset:
    folder = cfg.require_path()
    ratings = require_file(folder / "ratings.dat", "rating file")
    tables = {
        "interactions": _interactions(
            split_fields(read_lines(spark, [ratings], cfg.encoding), "::", _RATING_FIELDS), ratings
        )
    }

    movies = folder / "movies.dat"
    if movies.exists():
        require_file(movies, "movie file")
        items = split_fields(read_lines(spark, [movies], cfg.encoding), "::", (ITEM_ID, TITLE, "genres"))
        tables["items"] = _items(
            items.select(
                SOURCE_FILE, RAW, PARSE_ERROR, ITEM_ID, TITLE, tokens("genres", r"\|").alias(CATEGORIES)
            ),
            movies,
        )

    users = folder / "users.dat"
    if users.exists():
        require_file(users, "user file")
        tables["users"] = _users(
            split_fields(read_lines(spark, [users], cfg.encoding), "::", _USER_FIELDS_DAT), users
        )
    return RawDataset(tables)


def _csv_table(spark: SparkSession, path: Path, cfg: DataConfig, columns: dict[str, str]) -> DataFrame:
    """Read a headed CSV; ``columns`` maps the file's header names to canonical ones (all required)."""
    header = [h.strip().strip('"') for h in first_line(path, cfg.encoding).split(",")]
    for name in columns:
        if name not in header:
            raise InputError(f"{path}: required column {name!r} missing; header has {header}.")
    names = [columns.get(h, f"_unused_{i}") for i, h in enumerate(header)]
    lines = drop_line(read_lines(spark, [path], cfg.encoding), first_line(path, cfg.encoding))
    frame = split_fields(lines, _CSV_SPLIT, names)
    # Strip RFC 4180 quoting: "a ""b"" c" -> a "b" c
    for name in columns.values():
        unquoted = F.regexp_replace(F.regexp_extract(F.col(name), r'^"(.*)"$', 1), '""', '"')
        frame = frame.withColumn(name, F.when(F.col(name).startswith('"'), unquoted).otherwise(F.col(name)))
    return frame.select(SOURCE_FILE, RAW, PARSE_ERROR, *columns.values())


def read_csv(spark: SparkSession, cfg: DataConfig) -> RawDataset:
    folder = cfg.require_path()
    ratings = require_file(folder / "ratings.csv", "rating file")
    rating_columns = {"userId": USER_ID, "movieId": ITEM_ID, "rating": RATING, "timestamp": TIMESTAMP}
    tables = {"interactions": _interactions(_csv_table(spark, ratings, cfg, rating_columns), ratings)}

    movies = folder / "movies.csv"
    if movies.exists():
        require_file(movies, "movie file")
        items = _csv_table(spark, movies, cfg, {"movieId": ITEM_ID, "title": TITLE, "genres": "genres"})
        no_genres = F.when(F.col("genres") == "(no genres listed)", F.lit("")).otherwise(F.col("genres"))
        items = items.withColumn("genres", no_genres)
        tables["items"] = _items(
            items.select(
                SOURCE_FILE, RAW, PARSE_ERROR, ITEM_ID, TITLE, tokens("genres", r"\|").alias(CATEGORIES)
            ),
            movies,
        )
    return RawDataset(tables)
