"""CTR samples for rankers (DLRM): one row per (user, item, timestamp) with a 0/1 label and
point-in-time features.

The raw ``rating`` is carried (null for sampled negatives and unrated events) so that a ranker may learn
from the graded rating as well as from the 0/1 label (``model.objective=ordinal``); it is a target,
never a feature.

Labels: an explicit ``label`` wins; otherwise ``rating >= rating_threshold``; an event with neither is an
implicit positive, and ``negatives_per_positive`` items the user never interacted with are sampled for it
(uniform over the item vocabulary, seeded hash, so reruns give the same rows).

No leakage: user and item statistics of a sample count only events with a timestamp strictly smaller than
the sample's (``rangeBetween(unboundedPreceding, -1)`` over the timestamp), and the recent-items bag holds
only items consumed strictly earlier. Negatives copy their positive's user-side features and get their own
item-side statistics at the same timestamp.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from recsys.schema import FIRST_INDEX, ITEM_ID, ITEM_IDX, LABEL, RATING, SPLIT, TIMESTAMP, USER_IDX

IS_EVENT = "is_event"
RECENT_ITEMS = "recent_item_idx"
STAT_COLUMNS = (
    "user_count_before",
    "user_positives_before",
    "user_ctr_before",
    "item_count_before",
    "item_positives_before",
    "item_ctr_before",
)


@dataclass(frozen=True)
class CTRConfig:
    rating_threshold: float
    negatives_per_positive: int
    recent_items: int
    seed: int


def label_events(events: DataFrame, threshold: float) -> DataFrame:
    """Add ``label`` (int) and ``implicit`` (bool: no label and no rating, so negatives are needed)."""
    from_rating = F.when(F.col(RATING).isNotNull(), (F.col(RATING) >= threshold).cast("int"))
    label = F.coalesce(F.col(LABEL), from_rating, F.lit(1)).cast("int")
    implicit = F.col(LABEL).isNull() & F.col(RATING).isNull()
    return events.withColumn("implicit", implicit).withColumn(LABEL, label)


def with_recent_items(events: DataFrame, size: int) -> DataFrame:
    """Items of the user's previous ``size`` events that happened strictly before this one in time.

    Ties: earlier rows with the same timestamp are inside the row window but filtered out, so a user with
    many same-second events can get fewer than ``size`` items.
    """
    window = Window.partitionBy(USER_IDX).orderBy(TIMESTAMP, ITEM_ID).rowsBetween(-size, -1)
    previous = F.collect_list(F.struct(F.col(TIMESTAMP).alias("t"), F.col(ITEM_IDX).alias("i"))).over(window)
    earlier = F.filter(previous, lambda e: e["t"] < F.col(TIMESTAMP))
    return events.withColumn(RECENT_ITEMS, F.transform(earlier, lambda e: e["i"]))


def sample_negatives(events: DataFrame, num_items_total: int, cfg: CTRConfig) -> DataFrame:
    """``negatives_per_positive`` rows per implicit event, items drawn by a seeded hash.

    Draws that hit an item the user interacted with at any time are dropped (so a user may get fewer).
    """
    implicit = events.where(F.col("implicit"))
    draws = F.explode(F.sequence(F.lit(0), F.lit(cfg.negatives_per_positive - 1))).alias("draw")
    candidates = implicit.select("*", draws)
    num_real = num_items_total - FIRST_INDEX
    hashed = F.xxhash64(F.lit(cfg.seed), F.col(USER_IDX), F.col(TIMESTAMP), F.col(ITEM_IDX), F.col("draw"))
    candidates = candidates.withColumn(ITEM_IDX, (F.pmod(hashed, F.lit(num_real)) + FIRST_INDEX).cast("long"))
    seen = events.select(USER_IDX, ITEM_IDX).distinct()
    negatives = candidates.join(seen, on=[USER_IDX, ITEM_IDX], how="left_anti")
    negatives = negatives.dropDuplicates([USER_IDX, TIMESTAMP, ITEM_IDX])
    negatives = negatives.withColumn(RATING, F.lit(None).cast("double"))
    return negatives.withColumn(LABEL, F.lit(0)).withColumn(IS_EVENT, F.lit(0)).drop("draw")


def _prior(partition: str, value: Column) -> Column:
    window = Window.partitionBy(partition).orderBy(TIMESTAMP).rangeBetween(Window.unboundedPreceding, -1)
    return F.coalesce(F.sum(value).over(window), F.lit(0)).cast("long")


def with_point_in_time_stats(samples: DataFrame) -> DataFrame:
    """User/item counts, positives and CTR over real events strictly earlier than each sample."""
    event = F.col(IS_EVENT)
    positive = F.col(IS_EVENT) * F.col(LABEL)
    out = samples
    for side, key in (("user", USER_IDX), ("item", ITEM_IDX)):
        count, pos = f"{side}_count_before", f"{side}_positives_before"
        out = out.withColumn(count, _prior(key, event)).withColumn(pos, _prior(key, positive))
        ctr = F.when(F.col(count) > 0, F.col(pos) / F.col(count))
        out = out.withColumn(f"{side}_ctr_before", ctr)
    return out


def build_ctr_samples(events: DataFrame, num_items_total: int, cfg: CTRConfig) -> DataFrame:
    """CTR rows from split, encoded events (``user_idx, item_idx, item_id, timestamp, rating, label, split``).

    Returns ``user_idx, item_idx, timestamp, split, label, rating, recent_item_idx`` + :data:`STAT_COLUMNS`.
    """
    labelled = with_recent_items(label_events(events, cfg.rating_threshold), cfg.recent_items)
    positives = labelled.withColumn(IS_EVENT, F.lit(1)).withColumn(RATING, F.col(RATING).cast("double"))
    columns = [USER_IDX, ITEM_IDX, TIMESTAMP, SPLIT, LABEL, RATING, RECENT_ITEMS, IS_EVENT, "implicit"]
    samples = positives.select(*columns)
    if cfg.negatives_per_positive > 0:
        samples = samples.unionByName(sample_negatives(positives.select(*columns), num_items_total, cfg))
    stats = with_point_in_time_stats(samples)
    return stats.select(USER_IDX, ITEM_IDX, TIMESTAMP, SPLIT, LABEL, RATING, RECENT_ITEMS, *STAT_COLUMNS)
