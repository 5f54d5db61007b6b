"""CTR samples: point-in-time statistics checked against an independent pandas brute force (no leakage),
negative sampling rules, and run-to-run determinism of every features output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession

from features.build import FeaturesResult
from recsys.config import compose, to_plain
from recsys.tables import read_arrow
from tests.conftest import spark_overrides
from tests.helpers.runs import ingest_and_features, rows

NEGATIVES = 2
RECENT = 3
THRESHOLD = 4.0


def _cfg(root: Path) -> dict[str, Any]:
    return to_plain(
        compose(
            [
                *spark_overrides(root),
                "data=synthetic",
                "data.num_users=40",
                "data.num_items=30",
                "data.num_events=900",
                "data.rated_fraction=0.6",
                f"features.ctr.negatives_per_positive={NEGATIVES}",
                f"features.ctr.recent_items={RECENT}",
                f"features.ctr.rating_threshold={THRESHOLD}",
            ]
        )
    )


@pytest.fixture(scope="module")
def run(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> FeaturesResult:
    return ingest_and_features(spark, _cfg(tmp_path_factory.mktemp("ctr")))[1]


def _events(run: FeaturesResult) -> pd.DataFrame:
    events = read_arrow(run.stage_dir / "split").to_pandas()
    labels = np.where(events["rating"].isna(), 1, (events["rating"] >= THRESHOLD).astype(int))
    return events.assign(label=labels)


def test_statistics_count_only_strictly_earlier_events(run: FeaturesResult) -> None:
    events = _events(run)
    ctr = read_arrow(run.stage_dir / "ctr").to_pandas()
    for side, key in (("user", "user_idx"), ("item", "item_idx")):
        by_key = {k: g for k, g in events.groupby(key)}
        expected_count, expected_pos = [], []
        for k, t in zip(ctr[key], ctr["timestamp"], strict=True):
            group = by_key.get(k)
            earlier = group[group["timestamp"] < t] if group is not None else events.iloc[:0]
            expected_count.append(len(earlier))
            expected_pos.append(int(earlier["label"].sum()))
        assert ctr[f"{side}_count_before"].tolist() == expected_count
        assert ctr[f"{side}_positives_before"].tolist() == expected_pos
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(
                np.array(expected_count) > 0, np.array(expected_pos) / np.array(expected_count), np.nan
            )
        np.testing.assert_allclose(ctr[f"{side}_ctr_before"].astype(float).to_numpy(), rate, equal_nan=True)


def test_recent_items_happened_strictly_before(run: FeaturesResult) -> None:
    events = _events(run).sort_values(["user_idx", "timestamp", "item_id"])
    expected: dict[tuple[int, int, int], list[int]] = {}
    for _, group in events.groupby("user_idx"):
        items, times = group["item_idx"].tolist(), group["timestamp"].tolist()
        for p, (item, t) in enumerate(zip(items, times, strict=True)):
            window = range(max(0, p - RECENT), p)
            expected[(group["user_idx"].iloc[0], item, t)] = [items[q] for q in window if times[q] < t]
    ctr = read_arrow(run.stage_dir / "ctr").to_pandas()
    checked = 0
    for user, item, t, recent in zip(
        ctr["user_idx"], ctr["item_idx"], ctr["timestamp"], ctr["recent_item_idx"], strict=True
    ):
        if (user, item, t) in expected:  # a real event; negatives copy the bag of their positive
            assert list(recent) == expected[(user, item, t)]
            checked += 1
        earlier = set(events[(events["user_idx"] == user) & (events["timestamp"] < t)]["item_idx"])
        assert set(recent) <= earlier and len(recent) <= RECENT
    assert checked == len(events)
    assert sum(len(v) > 0 for v in expected.values()) > len(expected) / 2


def test_labels_and_negative_sampling(run: FeaturesResult) -> None:
    events = _events(run)
    ctr = read_arrow(run.stage_dir / "ctr").to_pandas()
    positives = ctr.merge(
        events[["user_idx", "item_idx", "timestamp", "label", "rating"]],
        on=["user_idx", "item_idx", "timestamp"],
        suffixes=("", "_event"),
    )
    assert len(positives) == len(events)
    assert (positives["label"] == positives["label_event"]).all()
    # The raw rating rides along as a training target (model.objective=ordinal): equal where rated.
    assert positives["rating"].isna().equals(positives["rating_event"].isna())
    rated = positives["rating_event"].notna()
    assert 0 < rated.sum() < len(positives)
    assert (positives.loc[rated, "rating"] == positives.loc[rated, "rating_event"]).all()
    negatives = ctr.merge(
        events[["user_idx", "item_idx", "timestamp"]],
        how="left",
        indicator=True,
        on=["user_idx", "item_idx", "timestamp"],
    )
    negatives = negatives[negatives["_merge"] == "left_only"]
    implicit = int(events["rating"].isna().sum())
    assert 0 < len(negatives) <= NEGATIVES * implicit
    assert (negatives["label"] == 0).all()
    assert negatives["rating"].isna().all()
    consumed = set(zip(events["user_idx"], events["item_idx"], strict=True))
    assert not any(
        (u, i) in consumed for u, i in zip(negatives["user_idx"], negatives["item_idx"], strict=True)
    )
    assert run.manifests["ctr"].counts["negatives"] == int((ctr["label"] == 0).sum())


def test_same_input_and_config_give_identical_rows(
    spark: SparkSession, run: FeaturesResult, tmp_path: Path
) -> None:
    again = ingest_and_features(spark, _cfg(tmp_path / "again"))[1]
    assert set(again.manifests) == set(run.manifests)
    for name in run.manifests:
        first = pd.DataFrame(rows(run.stage_dir / name))
        second = pd.DataFrame(rows(again.stage_dir / name))
        key = sorted(first.columns)
        first = first[key].astype(str).sort_values(key).reset_index(drop=True)
        second = second[key].astype(str).sort_values(key).reset_index(drop=True)
        pd.testing.assert_frame_equal(first, second, obj=name)
        assert again.manifests[name].config_hash == run.manifests[name].config_hash
