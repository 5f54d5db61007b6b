"""Leave-one-out and temporal splits, tie-breaks on equal timestamps, and left-truncated sequences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from features.sequences import build_sequences
from features.split import split_leave_one_out, split_random, split_temporal
from tests.helpers import raw_files
from tests.helpers.runs import ingest_and_features, rows


def _events(spark: SparkSession, data: list[tuple[int, int, str, int]]) -> Any:
    return spark.createDataFrame(data, "user_idx long, item_idx long, item_id string, timestamp long")


def test_leave_one_out_breaks_timestamp_ties_by_item_id(spark: SparkSession) -> None:
    # user 1: three events in the same second; item_id order decides: "a" < "b" < "c"
    events = _events(
        spark, [(1, 7, "c", 10), (1, 5, "a", 10), (1, 6, "b", 10), (2, 8, "x", 1), (2, 9, "y", 2)]
    )
    for shuffled in (events, events.orderBy("item_idx", ascending=False).repartition(3)):
        got = {(r.user_idx, r.item_id): r.split for r in split_leave_one_out(shuffled, 3).collect()}
        assert got == {
            (1, "a"): "train",
            (1, "b"): "valid",
            (1, "c"): "test",
            (2, "x"): "train",
            (2, "y"): "train",
        }


def test_temporal_split_uses_global_time_cut(spark: SparkSession) -> None:
    events = _events(spark, [(1, i, str(i), t) for i, t in enumerate(range(1, 11))])
    got = {r.timestamp: r.split for r in split_temporal(events, 0.2, 0.2).collect()}
    assert [got[t] for t in range(1, 11)] == ["train"] * 6 + ["valid"] * 2 + ["test"] * 2


def test_sequences_truncate_from_the_left_and_histories_precede_targets(spark: SparkSession) -> None:
    events = spark.createDataFrame(
        [(1, 10 + t, f"i{t}", t, "train") for t in range(1, 6)]
        + [(1, 90, "v", 6, "valid"), (1, 91, "w", 7, "test"), (2, 5, "q", 1, "train")]
        # Held-out events in the middle and first (temporal and random splits do this).
        + [
            (3, 31, "a", 1, "train"),
            (3, 32, "b", 2, "test"),
            (3, 33, "c", 3, "train"),
            (3, 34, "d", 4, "valid"),
        ]
        + [(4, 41, "e", 1, "test"), (4, 42, "f", 2, "train")],
        "user_idx long, item_idx long, item_id string, timestamp long, split string",
    )
    got = {(r.user_idx, r.split): r for r in build_sequences(events, 3).collect()}
    assert got[(1, "train")].history_item_idx == [13, 14, 15]
    assert got[(1, "train")].history_timestamp == [3, 4, 5]
    assert got[(1, "valid")].history_item_idx == [13, 14, 15] and got[(1, "valid")].target_item_idx == 90
    assert got[(1, "test")].history_item_idx == [14, 15, 90] and got[(1, "test")].target_item_idx == 91
    assert got[(2, "train")].history_item_idx == [5]  # shorter than max_length: kept whole
    assert got[(2, "train")].length == 1
    assert got[(3, "test")].history_item_idx == [31] and got[(3, "test")].target_item_idx == 32
    assert got[(3, "valid")].history_item_idx == [31, 32, 33] and got[(3, "valid")].target_item_idx == 34
    assert got[(3, "train")].history_item_idx == [31, 33]
    assert got[(4, "test")].history_item_idx == [] and got[(4, "test")].target_item_idx == 41
    assert len(got) == 9


def test_features_stage_on_fixture(spark: SparkSession, make_cfg: Any, tmp_path: Path) -> None:
    folder = raw_files.atomic(tmp_path / "raw")
    cfg = make_cfg("data=recbole_atomic", f"data.path={folder}", "data.stem=ml-test")
    _, features = ingest_and_features(spark, cfg)
    split = rows(features.stage_dir / "split", ["user_id", "timestamp"])
    assert [(r["user_id"], r["item_id"], r["split"]) for r in split] == [
        ("1", "10", "train"),
        ("1", "11", "valid"),
        ("1", "12", "test"),
        ("2", "10", "train"),
        ("2", "12", "valid"),
        ("2", "13", "test"),
        ("3", "11", "train"),  # one event < min_user_events: stays in train
    ]
    content = {r["item_id"]: r for r in rows(features.stage_dir / "content")}
    assert (
        content["13"]["has_metadata"] is False
        and content["13"]["text"] == ""
        and content["13"]["title"] == ""
    )
    assert content["10"]["text"] == "Toy Story. Categories: Animation, Comedy. release_year: 1995"
    popularity = {r["item_idx"]: r["interactions"] for r in rows(features.stage_dir / "popularity")}
    item_idx = {r["item_id"]: r["item_idx"] for r in rows(features.stage_dir / "vocab_item")}
    assert popularity == {item_idx["10"]: 2, item_idx["11"]: 1}


def test_random_split_is_seeded_and_close_to_its_fractions(spark: SparkSession) -> None:
    data = [(u, i, f"i{i}", 1000 * u + i) for u in range(40) for i in range(50)]
    events = spark.createDataFrame(data, "user_idx long, item_idx long, item_id string, timestamp long")
    events = events.withColumn("user_id", events.user_idx.cast("string"))
    first = {(r.user_id, r.item_id): r.split for r in split_random(events, 0.1, 0.1, seed=3).collect()}
    again = {
        (r.user_id, r.item_id): r.split for r in split_random(events.repartition(4), 0.1, 0.1, 3).collect()
    }
    other = {(r.user_id, r.item_id): r.split for r in split_random(events, 0.1, 0.1, seed=4).collect()}
    assert first == again and first != other
    shares = {s: sum(v == s for v in first.values()) / len(first) for s in ("train", "valid", "test")}
    assert shares["train"] == pytest.approx(0.8, abs=0.03)
    assert shares["valid"] == pytest.approx(0.1, abs=0.03) and shares["test"] == pytest.approx(0.1, abs=0.03)
