"""Amazon Reviews 2023 JSONL: ``<Category>.jsonl`` reviews and ``meta_<Category>.jsonl`` item metadata.

Items are keyed by ``parent_asin`` (variants of one product share it), as the dataset's authors recommend.
Every JSON field is read as a string so a wrongly typed value becomes a validation failure, not a null.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys.datasets.base import (
    PARSE_ERROR,
    RAW,
    SOURCE_FILE,
    DataConfig,
    RawDataset,
    RawTable,
    read_lines,
    require_file,
    with_missing,
)
from recsys.schema import (
    CATEGORIES,
    IMAGE_PATH,
    INTERACTIONS,
    ITEM_ID,
    ITEMS,
    RATING,
    TEXT,
    TIMESTAMP,
    TITLE,
    USER_ID,
)

_CORRUPT = "_corrupt_record"
_STR = T.StringType()
_STRS = T.ArrayType(T.StringType())
_REVIEW = T.StructType(
    [
        T.StructField(n, _STR)
        for n in ("user_id", "asin", "parent_asin", "rating", "timestamp", "title", "text")
    ]
    + [T.StructField(_CORRUPT, _STR)]
)
_META = T.StructType(
    [T.StructField(n, _STR) for n in ("parent_asin", "title", "main_category", "store")]
    + [T.StructField(n, _STRS) for n in ("categories", "description", "features")]
    + [T.StructField(_CORRUPT, _STR)]
)
_JSON_OPTIONS = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT}


def _parse_error(record: Column) -> Column:
    return F.when(record.isNull() | record[_CORRUPT].isNotNull(), F.lit("malformed JSON"))


def _joined(column: Column) -> Column:
    return F.array_join(F.coalesce(column, F.array().cast("array<string>")), " ")


def read(spark: SparkSession, cfg: DataConfig) -> RawDataset:
    folder = cfg.require_path()
    category = str(cfg.options["category"])
    reviews_path = require_file(folder / f"{category}.jsonl", "review file")
    review = F.from_json(F.col(RAW), _REVIEW, _JSON_OPTIONS)
    reviews = read_lines(spark, [reviews_path], cfg.encoding).withColumn("_j", review)
    interactions = reviews.select(
        SOURCE_FILE,
        RAW,
        _parse_error(F.col("_j")).alias(PARSE_ERROR),
        F.col("_j.user_id").alias(USER_ID),
        F.coalesce(F.col("_j.parent_asin"), F.col("_j.asin")).alias(ITEM_ID),
        F.col("_j.rating").alias(RATING),
        F.col("_j.timestamp").alias(TIMESTAMP),
    )
    tables = {
        "interactions": RawTable(INTERACTIONS, with_missing(interactions, INTERACTIONS), (reviews_path,))
    }

    meta_path = folder / f"meta_{category}.jsonl"
    if meta_path.exists():
        require_file(meta_path, "metadata file")
        meta = read_lines(spark, [meta_path], cfg.encoding).withColumn(
            "_j", F.from_json(F.col(RAW), _META, _JSON_OPTIONS)
        )
        listed = F.coalesce(F.col("_j.categories"), F.array().cast("array<string>"))
        main = F.when(F.col("_j.main_category").isNotNull(), F.array(F.col("_j.main_category")))
        categories = F.when(F.size(listed) > 0, listed).otherwise(
            F.coalesce(main, F.array().cast("array<string>"))
        )
        text = F.concat_ws(" ", _joined(F.col("_j.description")), _joined(F.col("_j.features")))
        items = meta.select(
            SOURCE_FILE,
            RAW,
            _parse_error(F.col("_j")).alias(PARSE_ERROR),
            F.col("_j.parent_asin").alias(ITEM_ID),
            F.col("_j.title").alias(TITLE),
            F.trim(text).alias(TEXT),
            categories.alias(CATEGORIES),
        )
        image_dir = cfg.options.get("image_dir")
        if image_dir:
            items = _with_images(spark, items, Path(str(image_dir)))
        tables["items"] = RawTable(ITEMS, with_missing(items, ITEMS), (meta_path,))
    return RawDataset(tables)


def _with_images(spark: SparkSession, items: DataFrame, folder: Path) -> DataFrame:
    """Attach ``<image_dir>/<parent_asin>.<ext>`` where such a local file exists."""
    found = [
        (p.stem, str(p.resolve()))
        for p in sorted(folder.glob("*"))
        if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"}
    ]
    images = spark.createDataFrame(found, schema=f"{ITEM_ID} string, {IMAGE_PATH} string")
    return items.join(F.broadcast(images), on=ITEM_ID, how="left")
