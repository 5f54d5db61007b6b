"""Two-stage evaluation: point-in-time CTR features of (user, candidate) rows on a hand-written event table
and against the features stage's own CTR rows, then retrieval + DLRM re-ranking on synthetic features, and the
``rerank`` stage that re-ranks with the ranker the ``train`` stage published."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest
from mlflow import MlflowClient
from pyspark.sql import SparkSession

from features.ctr import STAT_COLUMNS
from models.dlrm.module import DLRMLitModule
from models.dlrm.rerank import (
    TwoStageResult,
    event_labels,
    point_in_time_features,
    rerank,
    two_stage_evaluation,
)
from models.dlrm.train import TrainResult, run_train
from pipelines.jobs import run_evaluate
from pipelines.stages import STAGES, run_stage, scope
from recsys.errors import InputError
from recsys.paths import RunPaths
from recsys.schema import ITEM_ID, ITEM_IDX, LABEL, RATING, SPLIT, TIMESTAMP, USER_IDX
from recsys.tables import read_arrow
from tests.models.test_dlrm_pyfunc import build_features, compose_cfg, ctr_folder, train_tiny

RECENT = 2
STATS = STAT_COLUMNS

# user, item, timestamp, label; user 10 has two events at t=200 (tie broken by item_id "i6" < "i7").
EVENTS = pd.DataFrame(
    [(10, 5, 100, 1), (10, 6, 200, 0), (10, 7, 200, 1), (10, 8, 300, 1), (11, 5, 150, 0), (11, 6, 300, 1)],
    columns=[USER_IDX, ITEM_IDX, TIMESTAMP, LABEL],
).assign(**{ITEM_ID: lambda f: "i" + f[ITEM_IDX].astype(str)})

# query (user, item, time) -> user count, positives, ctr, item count, positives, ctr, recent items.
EXPECTED: list[tuple[tuple[int, int, int], tuple[Any, ...]]] = [
    ((10, 5, 200), (1, 1, 1.0, 2, 1, 0.5, [5])),
    ((10, 6, 300), (3, 2, 2 / 3, 1, 0, 0.0, [6, 7])),
    ((10, 8, 300), (3, 2, 2 / 3, 0, 0, None, [6, 7])),
    ((11, 8, 100), (0, 0, None, 0, 0, None, [])),
    ((12, 5, 1000), (0, 0, None, 2, 1, 0.5, [])),
    ((10, 9, 50), (0, 0, None, 0, 0, None, [])),
    ((10, 6, 301), (4, 3, 0.75, 2, 1, 0.5, [7, 8])),
]


def test_point_in_time_features_count_only_strictly_earlier_events() -> None:
    queries = np.array([q for q, _ in EXPECTED], dtype=np.int64)
    table = point_in_time_features(EVENTS, queries[:, 0], queries[:, 1], queries[:, 2], RECENT)
    rows = table.to_pylist()
    for row, (query, expected) in zip(rows, EXPECTED, strict=True):
        assert (row[USER_IDX], row[ITEM_IDX], row[TIMESTAMP]) == query
        got = (*(row[s] for s in STATS), row["recent_item_idx"])
        assert got[:2] == expected[:2] and got[3:5] == expected[3:5] and got[6] == expected[6], query
        for value, want in ((got[2], expected[2]), (got[5], expected[5])):
            assert value == pytest.approx(want) if want is not None else value is None, query


def test_event_labels_follow_the_features_rule() -> None:
    events = pd.DataFrame({LABEL: [None, None, None, 0], RATING: [4.5, 3.0, None, 5.0]})
    assert event_labels(events, 4.0).tolist() == [1, 0, 1, 0]


def test_rerank_is_a_stable_permutation_with_padding_last() -> None:
    candidates = np.array([[4, 7, 9, -1], [3, 2, 5, 6]])
    scores = np.array([[0.1, 0.9, 0.1, 0.0], [0.2, 0.2, 0.8, -np.inf]], dtype=np.float32)
    assert rerank(candidates, scores).tolist() == [[7, 4, 9, -1], [5, 3, 2, 6]]


@pytest.fixture(scope="module")
def setup(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], DLRMLitModule]:
    root = tmp_path_factory.mktemp("dlrm-rerank")
    cfg = build_features(spark, root)
    run_evaluate(compose_cfg(root, "model=puresvd"))
    return cfg, train_tiny(cfg)


def test_features_match_the_ctr_output(setup: tuple[dict[str, Any], DLRMLitModule]) -> None:
    """The features stage's rows (all are events: synthetic data is rated) at their own timestamps."""
    cfg, _ = setup
    features = ctr_folder(cfg).parent
    events = read_arrow(features / "split").to_pandas()
    events[LABEL] = event_labels(events, float(cfg["features"]["ctr"]["rating_threshold"]))
    ctr = read_arrow(ctr_folder(cfg))
    ctr = ctr.sort_by([(USER_IDX, "ascending"), (TIMESTAMP, "ascending"), (ITEM_IDX, "ascending")])
    ours = point_in_time_features(
        events,
        ctr[USER_IDX].to_numpy(),
        ctr[ITEM_IDX].to_numpy(),
        ctr[TIMESTAMP].to_numpy(),
        int(cfg["features"]["ctr"]["recent_items"]),
    )
    for name in STATS:
        np.testing.assert_allclose(
            pc.fill_null(ours[name], -1).to_numpy(), pc.fill_null(ctr[name], -1).to_numpy(), err_msg=name
        )
    # Without same-second events of a user the recent bags are identical.
    keys = ctr.select([USER_IDX, TIMESTAMP]).to_pandas()
    unique = ~keys.duplicated(keep=False).to_numpy()
    expected = [list(v) for v, u in zip(ctr["recent_item_idx"].to_pylist(), unique, strict=True) if u]
    got = [list(v) for v, u in zip(ours["recent_item_idx"].to_pylist(), unique, strict=True) if u]
    assert unique.mean() > 0.5 and got == expected


def test_two_stage_evaluation_reranks_candidates(setup: tuple[dict[str, Any], DLRMLitModule]) -> None:
    cfg, module = setup
    result: TwoStageResult = two_stage_evaluation(cfg, module, str(cfg["evaluation"]["rerank_retriever"]))
    assert 0.0 <= result.retrieval_ndcg_at_10 <= 1.0 and 0.0 <= result.reranked_ndcg_at_10 <= 1.0
    assert result.candidates.shape == (result.users.size, int(cfg["evaluation"]["candidates_k"]))
    for before, after in zip(result.candidates, result.reranked, strict=True):
        assert sorted(before.tolist()) == sorted(after.tolist())
    # Re-ranked lists are in descending ranker score.
    position = {}
    for row, (items, scores) in enumerate(zip(result.candidates, result.ranker_scores, strict=True)):
        position.update({(row, int(i)): float(s) for i, s in zip(items, scores, strict=True) if i >= 0})
    for row, items in enumerate(result.reranked):
        ordered = [position[(row, int(i))] for i in items if i >= 0]
        assert ordered == sorted(ordered, reverse=True)
    # History items are never candidates; test items are.
    split = read_arrow(ctr_folder(cfg).parent / "split").to_pandas()
    seen = split[split[SPLIT] != "test"].groupby(USER_IDX)[ITEM_IDX].apply(set)
    for user, items in zip(result.users, result.candidates, strict=True):
        assert not set(items.tolist()) & seen.get(user, set())
    assert 0.0 < result.candidate_recall <= 1.0
    for table in (result.retrieval_metrics, result.reranked_metrics):
        assert {"ndcg", "recall"} <= set(table["metric"]) and 10 in set(table["k"])


def test_two_stage_evaluation_needs_the_retrievers_vectors(
    setup: tuple[dict[str, Any], DLRMLitModule],
) -> None:
    cfg, module = setup
    with pytest.raises(FileNotFoundError, match=r"evaluate/ease/item_vectors\.npy: no item vectors"):
        two_stage_evaluation(cfg, module, "ease")


TWO_STAGE = (
    "two_stage/retrieval_ndcg_at_10",
    "two_stage/reranked_ndcg_at_10",
    "two_stage/candidate_recall",
    "two_stage/retrieval_recall_at_10",
    "two_stage/reranked_recall_at_10",
)


@pytest.fixture(scope="module")
def trained_and_reranked(
    setup: tuple[dict[str, Any], DLRMLitModule],
) -> tuple[dict[str, Any], TrainResult, Any]:
    """The ``train`` stage's trainer on the same features (a few smoke batches), then the ``rerank`` stage
    in its tracking scope, as ``recsys train model=dlrm`` and ``recsys rerank model=dlrm`` run them."""
    cfg, _ = setup
    root = Path(cfg["paths"]["root"])
    train_cfg = compose_cfg(root, "model=dlrm", "trainer=smoke", "model.epochs=1")
    trained = run_train(train_cfg)
    with scope("rerank", "rerank"):
        reranked = run_stage("rerank", train_cfg)
    return train_cfg, trained, reranked


def test_rerank_stage_refuses_without_a_published_ranker(setup: tuple[dict[str, Any], DLRMLitModule]) -> None:
    cfg, _ = setup
    elsewhere = {**cfg, "run": {**cfg["run"], "date": "2001-01-01"}}  # the same root, another snapshot
    paths = RunPaths.from_cfg(elsewhere)
    with pytest.raises(InputError, match=r"stage rerank needs ") as refused:
        run_stage("rerank", elsewhere)
    for missing in (paths.features / "split", paths.train("dlrm"), paths.evaluate("puresvd")):
        assert str(missing) in str(refused.value)


def test_training_publishes_the_ranker_but_no_two_stage_metrics(
    trained_and_reranked: tuple[dict[str, Any], TrainResult, Any],
) -> None:
    cfg, trained, _ = trained_and_reranked
    folder = RunPaths.from_cfg(cfg).train("dlrm")
    assert trained.published == folder
    assert not [k for k in trained.test_metrics if k.startswith("two_stage/")]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["extra"]["run_id"] == trained.run_id
    assert manifest["extra"]["metrics"]["test/auc"] == pytest.approx(trained.test_metrics["test/auc"])
    for name in manifest["extra"]["artifacts"].values():
        assert (folder / name).is_file(), name
    logged = MlflowClient(tracking_uri=str(cfg["tracking"]["tracking_uri"])).get_run(trained.run_id)
    assert not [k for k in logged.data.metrics if k.startswith("two_stage/")]


def test_rerank_stage_equals_the_two_stage_evaluation_of_the_trained_module(
    trained_and_reranked: tuple[dict[str, Any], TrainResult, Any],
) -> None:
    """What training used to compute with its in-memory module is what the rerank stage computes with the
    published ranker."""
    cfg, trained, stage = trained_and_reranked
    retriever = str(cfg["evaluation"]["rerank_retriever"])
    expected = two_stage_evaluation(cfg, trained.module, retriever)
    assert set(stage.metrics) == set(TWO_STAGE)
    assert stage.metrics["two_stage/retrieval_ndcg_at_10"] == pytest.approx(expected.retrieval_ndcg_at_10)
    assert stage.metrics["two_stage/reranked_ndcg_at_10"] == pytest.approx(expected.reranked_ndcg_at_10)
    assert stage.metrics["two_stage/candidate_recall"] == pytest.approx(expected.candidate_recall)
    assert stage.metrics["two_stage/reranked_recall_at_10"] <= stage.metrics["two_stage/candidate_recall"]
    for name in TWO_STAGE:
        assert 0.0 <= stage.metrics[name] <= 1.0, name

    # Published: both orders' metric tables under rerank/<ranker>-<retriever>.
    folder = RunPaths.from_cfg(cfg).rerank("dlrm", retriever)
    assert stage.outputs == (folder,)
    table = read_arrow(folder / "metrics").to_pandas()
    assert set(table["order"]) == {"retrieval", "reranked"}
    for order, frame in (("retrieval", expected.retrieval_metrics), ("reranked", expected.reranked_metrics)):
        mine = table[table["order"] == order].drop(columns="order").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, frame.reset_index(drop=True), check_dtype=False, rtol=1e-6)

    # Its own MLflow run: the two-stage metrics, the ranker's run, only the groups the stage reads as params.
    run = MlflowClient(tracking_uri=str(cfg["tracking"]["tracking_uri"])).get_run(stage.mlflow_run_id)
    assert run.info.run_id != trained.run_id
    assert run.data.tags["ranker_run_id"] == trained.run_id and run.data.tags["retriever"] == retriever
    assert run.data.tags["stage_kind"] == "rerank"
    for name in TWO_STAGE:
        assert run.data.metrics[name] == pytest.approx(stage.metrics[name]), name
    groups = {k.split(".")[0] for k in run.data.params}
    assert groups <= {*STAGES["rerank"].reads, "seed", "prefix"} and "model" in groups
