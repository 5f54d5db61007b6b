"""Train / valid / test assignment of encoded interactions.

* ``leave_one_out``: per user, events ordered by ``(timestamp, item_id)``; the last goes to test, the one
  before to valid, the rest to train. The raw ``item_id`` breaks ties on equal timestamps, so the result does
  not depend on file order or on vocabulary indices. Users with fewer than ``min_user_events`` events stay
  entirely in train.
* ``temporal``: one global cut. Events strictly after the ``1 - test_fraction`` time quantile go to test,
  those strictly after the ``1 - test_fraction - valid_fraction`` quantile to valid (exact
  ``percentile_disc``); events tied with a cut stay on its earlier side, so no second is split in two.
* ``random``: each event independently, by a seeded hash of ``(user_id, item_id, timestamp)``, into valid
  and test with the configured fractions (the "random 8:1:1" protocol of CTR papers). Leaks the future
  into train by design; use it only to compare with numbers published under that protocol.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys.errors import ConfigError
from recsys.schema import ITEM_ID, SPLIT, TIMESTAMP, USER_IDX

EVENT_ORDER = (TIMESTAMP, ITEM_ID)


@dataclass(frozen=True)
class SplitConfig:
    method: str
    min_user_events: int
    valid_fraction: float
    test_fraction: float
    seed: int = 0


# xxhash64 is mapped to [0, 1) through its low bits: 2**53 keeps the fraction exact in a double.
_UNIT_BITS = 2**53


def _check_fractions(valid_fraction: float, test_fraction: float) -> None:
    if not (valid_fraction >= 0 and test_fraction > 0 and valid_fraction + test_fraction < 1):
        raise ConfigError(
            f"features.split fractions must satisfy 0 <= valid, 0 < test, valid + test < 1; "
            f"got valid={valid_fraction}, test={test_fraction}."
        )


def split_random(events: DataFrame, valid_fraction: float, test_fraction: float, seed: int) -> DataFrame:
    """Add ``split`` by a seeded per-event hash (reproducible, independent of partitioning)."""
    _check_fractions(valid_fraction, test_fraction)
    hashed = F.xxhash64(F.lit(seed), F.col("user_id"), F.col(ITEM_ID), F.col(TIMESTAMP))
    unit = F.pmod(hashed, F.lit(_UNIT_BITS)) / F.lit(float(_UNIT_BITS))
    split = (
        F.when(unit < test_fraction, F.lit("test"))
        .when(unit < test_fraction + valid_fraction, F.lit("valid"))
        .otherwise(F.lit("train"))
    )
    return events.withColumn(SPLIT, split)


def split_leave_one_out(events: DataFrame, min_user_events: int) -> DataFrame:
    """Add ``split``; needs ``user_idx``, ``timestamp``, ``item_id``."""
    latest_first = Window.partitionBy(USER_IDX).orderBy(*[F.col(c).desc() for c in EVENT_ORDER])
    per_user = Window.partitionBy(USER_IDX)
    position = F.row_number().over(latest_first)
    eligible = F.count(F.lit(1)).over(per_user) >= min_user_events
    split = (
        F.when(eligible & (position == 1), F.lit("test"))
        .when(eligible & (position == 2), F.lit("valid"))
        .otherwise(F.lit("train"))
    )
    return events.withColumn(SPLIT, split)


def split_temporal(
    events: DataFrame, valid_fraction: float, test_fraction: float, time_column: str = TIMESTAMP
) -> DataFrame:
    _check_fractions(valid_fraction, test_fraction)
    # Rounded so 1 - 0.2 - 0.2 asks for the 0.6 quantile, not 0.6000000000000001.
    test_q, valid_q = round(1 - test_fraction, 12), round(1 - test_fraction - valid_fraction, 12)
    cuts = events.agg(
        F.expr(f"percentile_disc({test_q}) WITHIN GROUP (ORDER BY {time_column})").alias("test"),
        F.expr(f"percentile_disc({valid_q}) WITHIN GROUP (ORDER BY {time_column})").alias("valid"),
    ).first()
    assert cuts is not None
    split = (
        F.when(F.col(time_column) > cuts["test"], F.lit("test"))
        .when(F.col(time_column) > cuts["valid"], F.lit("valid"))
        .otherwise(F.lit("train"))
    )
    return events.withColumn(SPLIT, split)


def assign_splits(events: DataFrame, cfg: SplitConfig) -> DataFrame:
    if cfg.method == "leave_one_out":
        return split_leave_one_out(events, cfg.min_user_events)
    if cfg.method == "temporal":
        return split_temporal(events, cfg.valid_fraction, cfg.test_fraction)
    if cfg.method == "random":
        return split_random(events, cfg.valid_fraction, cfg.test_fraction, cfg.seed)
    raise ConfigError(
        f"features.split.method={cfg.method!r} is unknown; choose leave_one_out, temporal or random."
    )
