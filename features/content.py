"""Item content text: one row per vocabulary item, the input of text encoders.

``text`` is assembled as ``title<sep>Categories: a, b<sep>description`` skipping empty parts. Items that
appear in interactions but have no metadata row keep their row with empty title and text, so every item
index has a (possibly empty) content entry.

Precomputed vectors (``*_embedding`` columns of the items table, the canonical schema in
docs/configuration.md) are carried through as ``array<float>`` (null for items without metadata), so
content encoders can use them without reading the items table again. A column that arrives as JSON text
(``"[0.1, 0.2]"``) is parsed.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from recsys.schema import CATEGORIES, EMBEDDING_SUFFIX, IMAGE_PATH, ITEM_ID, ITEM_IDX, TEXT, TITLE

CATEGORY_IDX = "category_idx"
HAS_METADATA = "has_metadata"
_VECTOR_TYPE = "array<float>"


def embedding_columns(items: DataFrame) -> list[str]:
    """Names of the precomputed ``*_embedding`` columns of an items table, in table order."""
    return [c for c in items.columns if c.endswith(EMBEDDING_SUFFIX)]


def _as_vector(items: DataFrame, column: str) -> Column:
    if isinstance(items.schema[column].dataType, T.StringType):
        return F.from_json(F.col(column), _VECTOR_TYPE).alias(column)
    return F.col(column).cast(_VECTOR_TYPE).alias(column)


def assemble_text(separator: str) -> Column:
    categories = F.when(
        F.size(F.col(CATEGORIES)) > 0, F.concat(F.lit("Categories: "), F.array_join(F.col(CATEGORIES), ", "))
    )
    parts = [F.col(TITLE), categories, F.col(TEXT)]
    non_empty = [F.when(F.trim(p) != "", F.trim(p)) for p in parts]
    return F.concat_ws(separator, *non_empty)


def build_content(item_vocab: DataFrame, items: DataFrame | None, separator: str) -> DataFrame:
    """``item_idx, item_id, title, text, categories, image_path, has_metadata`` (+ any ``*_embedding``
    columns of ``items``) for every vocabulary item."""
    if items is None:
        items = item_vocab.sparkSession.createDataFrame(
            [],
            f"{ITEM_ID} string, {TITLE} string, {TEXT} string, "
            f"{CATEGORIES} array<string>, {IMAGE_PATH} string",
        )
    embeddings = embedding_columns(items)
    meta = items.select(
        ITEM_ID, TITLE, TEXT, CATEGORIES, IMAGE_PATH, *[_as_vector(items, c) for c in embeddings]
    ).withColumn(HAS_METADATA, F.lit(True))
    joined = item_vocab.join(meta, on=ITEM_ID, how="left")
    filled = joined.select(
        ITEM_IDX,
        ITEM_ID,
        F.coalesce(F.col(TITLE), F.lit("")).alias(TITLE),
        F.coalesce(F.col(TEXT), F.lit("")).alias(TEXT),
        F.coalesce(F.col(CATEGORIES), F.array().cast("array<string>")).alias(CATEGORIES),
        IMAGE_PATH,
        F.coalesce(F.col(HAS_METADATA), F.lit(False)).alias(HAS_METADATA),
        *embeddings,
    )
    return filled.withColumn(TEXT, assemble_text(separator))
