"""Train sequences the sequential models read from real features outputs: a user with a single train item
gives no (history -> next item) pair, so it is not a train row (a length-bucketed batch of such rows had no
input column and crashed SASRec on synthetic logs), but it is still served from its history."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from pyspark.sql import SparkSession

from models.sequential.data import HISTORY, load_sequences
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
