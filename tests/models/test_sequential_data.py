"""Train sequences the sequential models read from real features outputs: a user with a single train item
gives no (history -> next item) pair, so it is not a train row (a length-bucketed batch of such rows had no
input column and crashed SASRec on synthetic logs), but it is still served from its history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from pyspark.sql import SparkSession

from models.sequential.data import HISTORY, EvalSequences, SequenceData, keep_evaluated_users, load_sequences
from recsys.config import compose, to_plain
from recsys.schema import PADDING_INDEX, SPLIT
from recsys.tables import read_arrow
from tests.conftest import spark_overrides
from tests.helpers.runs import ingest_and_features

MAX_LEN = 20


@pytest.fixture(scope="module")
def features(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Most of 300 users have one or two events: many train sequences of a single item.
    overrides = ["data=synthetic", "data.num_users=300", "data.num_items=40", "data.num_events=450"]
    cfg = to_plain(compose([*spark_overrides(tmp_path_factory.mktemp("seq-data")), *overrides]))
    return ingest_and_features(spark, cfg)[1].stage_dir


def test_single_item_train_sequences_are_not_train_rows_but_still_served(features: Path) -> None:
    table = read_arrow(features / "sequences")
    train = table.filter(pc.equal(table.column(SPLIT), "train"))
    lengths = pc.list_value_length(train.column(HISTORY)).to_numpy()
    assert (lengths == 1).sum() > 50 and (lengths >= 2).sum() > 0

    data = load_sequences(features, MAX_LEN)
    real = (data.train != PADDING_INDEX).sum(axis=1)
    assert real.min() >= 2 and len(real) == int((lengths >= 2).sum())
    # Served users keep their history, one item or more.
    served = (data.full_histories != PADDING_INDEX).sum(axis=1)
    assert served.min() >= 1 and np.isin(train.column("user_idx").to_numpy(), data.full_users).all()


def test_only_the_evaluated_users_keep_their_evaluation_histories() -> None:
    histories = np.arange(12, dtype=np.int64).reshape(4, 3)
    data = SequenceData(
        train=np.zeros((1, 4), dtype=np.int64),
        evaluation={
            "valid": EvalSequences(np.array([2, 5, 7, 9]), histories),
            "test": EvalSequences(np.array([2, 5, 7, 9]), histories + 100),
        },
        full_users=np.array([2, 5, 7, 9]),
        full_histories=histories,
        num_items=200,
        num_users=10,
    )
    kept = keep_evaluated_users(data, {"test": np.array([5, 9])})
    assert kept.evaluation["test"].users.tolist() == [5, 9]
    assert kept.evaluation["test"].histories.tolist() == (histories[[1, 3]] + 100).tolist()
    # a split that was not sampled, and the serving histories, stay whole
    assert kept.evaluation["valid"].users.tolist() == [2, 5, 7, 9]
    assert np.array_equal(kept.full_histories, histories)
