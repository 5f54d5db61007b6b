"""Per-user item sequences, the input of sequential recommenders.

One row per user for ``train`` (the user's most recent ``max_length`` train events) and one row per valid /
test event (``target_*``) whose history is the ``max_length`` events of that user strictly before it in the
event order ``(timestamp, item_id)``, whatever their split: at evaluation time everything earlier is known.
Histories are truncated from the left (oldest dropped) and ordered oldest -> newest.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys.schema import ITEM_ID, ITEM_IDX, SPLIT, TIMESTAMP, USER_IDX

HISTORY_ITEMS = "history_item_idx"
HISTORY_TIMESTAMPS = "history_timestamp"
TARGET_ITEM = "target_item_idx"
TARGET_TIMESTAMP = "target_timestamp"
LENGTH = "length"


def build_sequences(events: DataFrame, max_length: int) -> DataFrame:
    """Sequences from split events (``user_idx``, ``item_idx``, ``item_id``, ``timestamp``, ``split``).

    Returns columns ``user_idx, split, history_item_idx [L], history_timestamp [L], length,
    target_item_idx, target_timestamp`` (targets null on train rows).
    """
    event = F.struct(
        F.col(TIMESTAMP).alias("t"),
        F.col(ITEM_ID).alias("k"),
        F.col(ITEM_IDX).alias("i"),
        F.col(SPLIT).alias("s"),
    )
    per_user = events.groupBy(USER_IDX).agg(F.array_sort(F.collect_list(event)).alias("events"))

    train_events = F.filter(F.col("events"), lambda e: e["s"] == "train")
    last_train = F.slice(
        train_events, F.greatest(F.lit(1), F.size(train_events) - max_length + 1), max_length
    )
    train = per_user.where(F.size(train_events) > 0).select(
        USER_IDX,
        F.lit("train").alias(SPLIT),
        F.transform(last_train, lambda e: e["i"]).alias(HISTORY_ITEMS),
        F.transform(last_train, lambda e: e["t"]).alias(HISTORY_TIMESTAMPS),
        F.lit(None).cast("long").alias(TARGET_ITEM),
        F.lit(None).cast("long").alias(TARGET_TIMESTAMP),
    )

    # Only the few non-train events become rows (two per user under leave-one-out): exploding every event
    # first and filtering after would materialise all of them.
    last = F.size("events") - 1
    held_out = F.filter(F.sequence(F.lit(0), last), lambda p: F.col("events")[p]["s"] != "train")
    positions = per_user.select(USER_IDX, "events", F.explode(held_out).alias("pos"))
    targets = positions.withColumn("target", F.col("events")[F.col("pos")])
    start = F.greatest(F.lit(0), F.col("pos") - max_length)
    before = F.slice(F.col("events"), start + 1, F.col("pos") - start)
    evaluation = targets.select(
        USER_IDX,
        F.col("target.s").alias(SPLIT),
        F.transform(before, lambda e: e["i"]).alias(HISTORY_ITEMS),
        F.transform(before, lambda e: e["t"]).alias(HISTORY_TIMESTAMPS),
        F.col("target.i").alias(TARGET_ITEM),
        F.col("target.t").alias(TARGET_TIMESTAMP),
    )
    return train.unionByName(evaluation).withColumn(LENGTH, F.size(HISTORY_ITEMS))


def item_popularity(events: DataFrame) -> DataFrame:
    """Train-split popularity per item: interactions and distinct users (for most-popular baselines)."""
    train = events.where(F.col(SPLIT) == "train")
    return train.groupBy(ITEM_IDX).agg(
        F.count(F.lit(1)).alias("interactions"), F.countDistinct(USER_IDX).alias("users")
    )
