"""Persistent vocabularies: raw string ids -> contiguous ints, stable across snapshots.

Index 0 is padding and 1 is out-of-vocabulary; real tokens start at 2. A new snapshot starts from the
previous vocabulary: every known token keeps its index (even when absent from the new data), and new tokens
are appended after the largest index, ordered by first appearance in time and then by the token itself, so
the same input always gives the same indices.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys.schema import FIRST_INDEX, ITEM_ID, ITEM_IDX, OOV_INDEX, USER_ID, USER_IDX

FIRST_SEEN = "first_seen"


@dataclass(frozen=True)
class VocabSpec:
    """One vocabulary: its output name, token column and index column."""

    name: str
    token: str
    index: str


USER_VOCAB = VocabSpec("vocab_user", USER_ID, USER_IDX)
ITEM_VOCAB = VocabSpec("vocab_item", ITEM_ID, ITEM_IDX)
CATEGORY_VOCAB = VocabSpec("vocab_category", "category", "category_idx")


def attribute_vocab(attribute: str) -> VocabSpec:
    return VocabSpec(f"vocab_{attribute}", attribute, f"{attribute}_idx")


def extend_vocabulary(tokens: DataFrame, spec: VocabSpec, previous: DataFrame | None) -> DataFrame:
    """Append unseen tokens to ``previous``.

    Args:
        tokens: rows ``(spec.token, first_seen)``; ``first_seen`` orders new tokens (a timestamp, or a
            constant when there is no time), ties broken by the token string. Duplicates are allowed.
        spec: which vocabulary.
        previous: the earlier vocabulary ``(spec.token, spec.index)`` or None for the first snapshot.

    Returns:
        ``(spec.token, spec.index)`` holding every previous row unchanged plus the new tokens.
    """
    firsts = (
        tokens.where(F.col(spec.token).isNotNull())
        .groupBy(spec.token)
        .agg(F.min(FIRST_SEEN).alias(FIRST_SEEN))
    )
    spark = tokens.sparkSession
    if previous is None:
        previous = spark.createDataFrame([], f"{spec.token} string, {spec.index} long")
    start_row = previous.agg(F.max(spec.index).alias("m")).first()
    start = FIRST_INDEX if start_row is None or start_row["m"] is None else int(start_row["m"]) + 1
    new = firsts.join(previous.select(spec.token), on=spec.token, how="left_anti")
    order = Window.orderBy(F.col(FIRST_SEEN).asc(), F.col(spec.token).asc())
    appended = new.select(spec.token, (F.row_number().over(order) - 1 + start).cast("long").alias(spec.index))
    return previous.select(spec.token, F.col(spec.index).cast("long")).unionByName(appended)


def encode(frame: DataFrame, vocab: DataFrame, spec: VocabSpec) -> DataFrame:
    """Add ``spec.index`` to ``frame`` by its ``spec.token`` column; unknown tokens get the OOV index."""
    joined = frame.join(vocab, on=spec.token, how="left")
    return joined.withColumn(spec.index, F.coalesce(F.col(spec.index), F.lit(OOV_INDEX).cast("long")))


def encode_list(frame: DataFrame, column: str, vocab: DataFrame, spec: VocabSpec, out: str) -> DataFrame:
    """Map an array-of-tokens column to an array of indices (order kept, OOV for unknown tokens)."""
    mapping = vocab.agg(F.map_from_entries(F.collect_list(F.struct(spec.token, spec.index))).alias("_m"))
    with_map = frame.crossJoin(F.broadcast(mapping))
    indices = F.transform(F.col(column), lambda t: F.coalesce(F.col("_m")[t], F.lit(OOV_INDEX).cast("long")))
    return with_map.withColumn(out, indices).drop("_m")


def vocabulary_size(vocab: DataFrame, spec: VocabSpec) -> int:
    """Rows an embedding table needs: largest index + 1 (so padding and OOV are included)."""
    row = vocab.agg(F.max(spec.index).alias("m")).first()
    return FIRST_INDEX if row is None or row["m"] is None else int(row["m"]) + 1
