"""The two-stage ranker: candidate lists from a published retriever (point in time, no history item, exact
scores), the listwise objective and list metric, and the ``train`` + ``rerank`` stages of ``model=ranker`` on
synthetic features with EASE as the retriever and MostPop as a score feature."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pyspark.sql import SparkSession

from models.dlrm.candidates import (
    ITEM_AGE_DAYS,
    RETRIEVER_RANK,
    RETRIEVER_Z,
    SECONDS_PER_DAY,
    Queries,
    Retrieved,
    _windowed_counts,
    labelled_events,
    list_rows,
    relevant_events,
    retrieve,
    score_feature_column,
    split_queries,
    window_column,
)
from models.dlrm.config import DLRMConfig
from models.dlrm.data import CTRIterableDataset
from models.dlrm.module import grouped_ndcg, listwise_loss
from pipelines.jobs import run_evaluate
from pipelines.stages import run_stage, scope
from recsys.config import typed
from recsys.errors import ConfigError
from recsys.manifest import read_manifest
from recsys.paths import RunPaths
from recsys.schema import FIRST_INDEX, ITEM_IDX, LABEL, SPLIT, TIMESTAMP, USER_IDX
from recsys.scoring import FusedScorer, candidate_models, load_retriever_scorer, retriever_parts
from recsys.tables import read_arrow
from tests.models.test_dlrm_pyfunc import build_features, compose_cfg

K = 8
LISTS_PER_BATCH = 4


def test_split_queries_use_only_earlier_splits_in_time_order() -> None:
    events = pd.DataFrame(
        {
            USER_IDX: [3, 3, 3, 3, 4, 4],
            ITEM_IDX: [7, 5, 6, 9, 5, 8],
            TIMESTAMP: [30, 10, 20, 40, 5, 50],
            SPLIT: ["train", "train", "valid", "test", "train", "valid"],
        }
    )
    valid = split_queries(events, "valid")
    assert valid.users.tolist() == [3, 4] and valid.times.tolist() == [20, 50]
    assert [h.tolist() for h in valid.histories] == [[5, 7], [5]]
    assert valid.truth == [{6}, {8}]
    test = split_queries(events, "test")
    assert test.users.tolist() == [3] and [h.tolist() for h in test.histories] == [[5, 6, 7]]


class _FixedScores:
    def __init__(self, scores: np.ndarray) -> None:
        self.scores = scores

    def score(self, histories: Any) -> np.ndarray:
        return np.repeat(self.scores[None, :], len(list(histories)), axis=0)


def test_retrieve_masks_history_and_reserved_items_and_keeps_score_order() -> None:
    scores = np.array([9.0, 9.0, 1.0, 5.0, 3.0, 5.0, 4.0], dtype=np.float32)
    got: Retrieved = retrieve(_FixedScores(scores), [np.array([3]), np.array([], dtype=np.int64)], 3)
    # reserved 0/1 never; history item 3 never for user 0; ties by lower index (3 before 5)
    assert got.items.tolist() == [[5, 6, 4], [3, 5, 6]]
    np.testing.assert_allclose(got.scores[1], [5.0, 5.0, 4.0])
    unmasked = scores[[2, 4, 5, 6]]
    expected_z = (5.0 - unmasked.mean()) / unmasked.std()
    assert got.z[0, 0] == pytest.approx(expected_z, rel=1e-5)


def test_windowed_counts_see_only_strictly_earlier_events() -> None:
    day = SECONDS_PER_DAY
    events = pd.DataFrame({ITEM_IDX: [2, 2, 2, 3], TIMESTAMP: [0, 20 * day, 29 * day + 10, 40 * day]})
    items = np.array([2, 2, 3], dtype=np.int64)
    times = np.array([29 * day + 10, 30 * day, 40 * day], dtype=np.int64)
    counts = _windowed_counts(events, items, times)
    assert counts[window_column(1)].tolist() == [0, 1, 0]
    assert counts[window_column(30)].tolist() == [2, 3, 0]
    assert counts[ITEM_AGE_DAYS].tolist() == [29, 30, 0]


def test_listwise_loss_is_cross_entropy_over_each_list() -> None:
    logits = torch.tensor([2.0, 0.0, -1.0, 0.5, 0.5, 0.5, 1.0, 2.0, 3.0], requires_grad=True)
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    loss = listwise_loss(logits, labels, 3)
    first = torch.nn.functional.cross_entropy(logits[:3].view(1, 3), torch.tensor([0]))
    last = -torch.log_softmax(logits[6:], dim=0)[1:].mean()
    # the middle list has no positive and adds nothing; multi-positive lists target a uniform mix
    assert loss.item() == pytest.approx(((first + last) / 2).item(), rel=1e-6)
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad[3:6] == 0)


def test_grouped_ndcg_ranks_within_each_group() -> None:
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.8, 0.3])
    labels = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
    groups = np.array([1, 1, 1, 2, 2, 3])  # group 3 has no positive: not averaged
    expected = (1 / np.log2(4) + 1 / np.log2(3)) / 2
    assert grouped_ndcg(scores, labels, groups, 10) == pytest.approx(expected)


def test_listwise_batches_hold_whole_lists(tmp_path: Path, ranker_config: DLRMConfig) -> None:
    lists, k = 12, ranker_config.list_size
    assert k is not None
    table = pa.table(
        {
            "list": np.repeat(np.arange(lists), k),
            USER_IDX: np.repeat(np.arange(lists), k),
            ITEM_IDX: np.tile(np.arange(k), lists) + 2,
            LABEL: np.tile(np.eye(1, k, 0, dtype=np.int64).ravel(), lists),
            **{name: np.zeros(lists * k) for name in ranker_config.dense_features},
            **{
                name: pa.array([[2]] * (lists * k), pa.list_(pa.int64()))
                for name in ranker_config.sparse_features
                if name != ITEM_IDX
            },
        }
    )
    (tmp_path / "split=train").mkdir()
    pq.write_table(table, tmp_path / "split=train" / "part-0.parquet", row_group_size=2 * k)
    dataset = CTRIterableDataset(
        tmp_path, "train", ranker_config, seed=1, shuffle=True, shuffle_buffer_rows=6 * k
    )
    seen = []
    for batch in dataset:
        assert batch.groups is not None
        groups = batch.groups.view(-1, k)
        assert torch.all(groups == groups[:, :1])  # every list whole and alone in its block
        assert torch.all(batch.labels.view(-1, k)[:, 0] == 1)
        seen += groups[:, 0].tolist()
    assert sorted(seen) == list(range(lists)) and seen != sorted(seen)


def test_config_refuses_listwise_without_lists(ranker_config: DLRMConfig) -> None:
    from dataclasses import replace

    with pytest.raises(ConfigError, match=r"needs model\.task=candidates"):
        replace(ranker_config, task="ctr", candidates=None)
    with pytest.raises(ConfigError, match=r"must be a multiple of model\.candidates\.k"):
        replace(ranker_config, batch_size=K * LISTS_PER_BATCH + 1)


class _Fixed:
    """Scores every history alike (``[N]`` fixed scores): the fusion's arithmetic in isolation."""

    def __init__(self, scores: list[float]) -> None:
        self.scores = np.asarray(scores, dtype=np.float32)

    def score(self, histories: Any) -> np.ndarray:
        return np.tile(self.scores, (len(list(histories)), 1))


def test_fused_retriever_sums_per_row_z_scores_over_real_items() -> None:
    # reserved indices (0, 1) carry huge scores: they must not move the parts' moments
    a = _Fixed([1e6, 1e6, 1.0, 2.0, 3.0, 4.0])
    b = _Fixed([-1e6, 0.0, 400.0, 300.0, 200.0, 100.0])
    fused = FusedScorer({"a": a, "b": b}).score([np.array([2]), np.array([3])])
    assert fused.shape == (2, 6)
    # the parts are mirror images on the real items: their z-scores cancel, whatever their scales
    np.testing.assert_allclose(fused[:, FIRST_INDEX:], 0.0, atol=1e-6)
    c = _Fixed([0.0, 0.0, 10.0, 20.0, 30.0, 40.0])  # same order as a, 10x the scale
    np.testing.assert_allclose(
        FusedScorer({"a": a, "c": c}).score([np.array([2])])[0, FIRST_INDEX:],
        2 * (np.arange(4) - 1.5) / np.std(np.arange(4)),
        rtol=1e-5,
    )


def test_retriever_fusion_names_its_parts() -> None:
    assert retriever_parts("sasrec+molar") == ("sasrec", "molar")
    assert retriever_parts("ease") == ("ease",)
    for bad in ("sasrec+", "ease+ease"):
        with pytest.raises(ConfigError, match="fusion"):
            retriever_parts(bad)
    model = {
        "task": "candidates",
        "candidates": {"retriever": "sasrec+molar", "score_features": ["molar", "ease"]},
    }
    assert candidate_models(model) == ("sasrec", "molar", "ease")


def _ranker_overrides() -> list[str]:
    return [
        "model=ranker",
        "model.candidates.retriever=ease",
        "model.candidates.score_features=[mostpop]",
        f"model.candidates.k={K}",
        "model.candidates.holdout_fraction=0.3",
        "model.dense_features.identity=[retriever_z,score_mostpop_z,user_ctr_before,item_ctr_before]",
        "model.epochs=2",
        "model.early_stopping_patience=null",
        "trainer=cpu",
    ]


def _ranker_cfg(root: Path) -> dict[str, Any]:
    cfg = compose_cfg(root, *_ranker_overrides())
    cfg["model"]["batch_size"] = K * LISTS_PER_BATCH
    return cfg


@pytest.fixture(scope="module")
def ranker_config(tmp_path_factory: pytest.TempPathFactory) -> DLRMConfig:
    cfg = _ranker_cfg(tmp_path_factory.mktemp("ranker-config"))
    return typed(DLRMConfig, cfg["model"], "model")


@pytest.fixture(scope="module")
def two_stage(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Synthetic features, EASE and MostPop evaluated, the ranker trained and the rerank stage run."""
    root = tmp_path_factory.mktemp("ranker")
    build_features(spark, root)
    for model in ("ease", "mostpop"):
        run_evaluate(compose_cfg(root, f"model={model}"))
    cfg = _ranker_cfg(root)
    with scope("train", "train_ranker"):
        trained = run_stage("train", cfg)
    with scope("rerank", "rerank_ranker"):
        reranked = run_stage("rerank", cfg)
    return {"cfg": cfg, "trained": trained, "reranked": reranked}


def test_candidate_lists_are_point_in_time_and_unseen(two_stage: dict[str, Any]) -> None:
    cfg = two_stage["cfg"]
    paths = RunPaths.from_cfg(cfg)
    folder = paths.work("train", "ranker") / "candidates"
    manifest = read_manifest(folder)
    split = read_arrow(paths.features / "split").to_pandas()
    seen = {
        name: split[split[SPLIT].isin(before)].groupby(USER_IDX)[ITEM_IDX].apply(set)
        for name, before in (("valid", ["train"]), ("test", ["train", "valid"]))
    }
    valid_users = set(split.loc[split[SPLIT] == "valid", USER_IDX])
    parts = {s: pq.read_table(folder / f"split={s}").to_pandas() for s in ("train", "valid", "test")}
    # the ranker learns from valid lists of some users, validates on the others', is tested on test lists
    assert not set(parts["train"][USER_IDX]) & set(parts["valid"][USER_IDX])
    assert set(parts["train"][USER_IDX]) | set(parts["valid"][USER_IDX]) <= valid_users
    assert manifest.counts["train_lists"] == parts["train"][USER_IDX].nunique() > 0
    for name, target in (("train", "valid"), ("valid", "valid"), ("test", "test")):
        rows = parts[name]
        for user, items in rows.groupby(USER_IDX)[ITEM_IDX]:
            assert not set(items) & seen[target].get(user, set()), (name, user)
        sizes = rows.groupby(USER_IDX).size()
        assert sizes.max() <= K and (name != "train" or (sizes == K).all())
        assert rows.groupby(USER_IDX)[RETRIEVER_RANK].apply(lambda r: r.tolist() == sorted(r)).all()
        assert rows.groupby(USER_IDX)[RETRIEVER_Z].apply(lambda z: z.is_monotonic_decreasing).all()
        # the features are those of the list's time: nothing at or after it is counted
        assert (rows[TIMESTAMP] == rows.groupby(USER_IDX)[TIMESTAMP].transform("min")).all()
    assert (parts["train"].groupby(USER_IDX)[LABEL].max() == 1).all()
    assert score_feature_column("mostpop") in parts["test"].columns


def test_a_fused_retriever_loads_from_its_published_parts(two_stage: dict[str, Any]) -> None:
    paths = RunPaths.from_cfg(two_stage["cfg"])
    histories = [np.array([2, 3]), np.array([4])]
    fused = load_retriever_scorer(paths, "ease+mostpop").score(histories)
    parts = [load_retriever_scorer(paths, name).score(histories) for name in ("ease", "mostpop")]
    z = [
        (p - p[:, FIRST_INDEX:].mean(1, keepdims=True)) / p[:, FIRST_INDEX:].std(1, keepdims=True)
        for p in parts
    ]
    np.testing.assert_allclose(fused, z[0] + z[1], rtol=1e-4, atol=1e-4)


def test_rows_from_the_relevant_events_equal_rows_from_all(two_stage: dict[str, Any]) -> None:
    """The served recommender builds its rows from the events of the request's users and candidates only."""
    cfg = two_stage["cfg"]
    paths = RunPaths.from_cfg(cfg)
    model_cfg = typed(DLRMConfig, cfg["model"], "model")
    events = labelled_events(paths.features, float(cfg["features"]["ctr"]["rating_threshold"]))
    queries = split_queries(events, "test")
    scorer = load_retriever_scorer(paths, "ease")
    retrieved = retrieve(scorer, queries.histories, K)
    recent = int(cfg["features"]["ctr"]["recent_items"])
    full, valid = list_rows(paths.features, model_cfg, events, queries, retrieved, {}, recent)
    mask = relevant_events(
        events[USER_IDX].to_numpy(), events[ITEM_IDX].to_numpy(), queries.users[:3], retrieved.items[:3]
    )
    assert 0 < mask.sum() < len(events)
    first = Queries(queries.users[:3], queries.times[:3], queries.histories[:3], queries.truth[:3])
    head = Retrieved(retrieved.items[:3], retrieved.scores[:3], retrieved.z[:3])
    some, some_valid = list_rows(paths.features, model_cfg, events[mask], first, head, {}, recent)
    np.testing.assert_array_equal(some_valid, valid[:3])
    assert some.equals(full.slice(0, some.num_rows))


def test_ranker_trains_on_lists_and_reports_list_ndcg(two_stage: dict[str, Any]) -> None:
    metrics = two_stage["trained"].metrics
    assert 0.0 < metrics["test/ndcg_at_10"] <= 1.0
    assert "best/val_ndcg_at_10" in metrics
    assert (RunPaths.from_cfg(two_stage["cfg"]).train("ranker") / "manifest.json").is_file()


def test_rerank_stage_reports_retrieval_reranked_and_ceiling(two_stage: dict[str, Any]) -> None:
    cfg, stage = two_stage["cfg"], two_stage["reranked"]
    paths = RunPaths.from_cfg(cfg)
    metrics = stage.metrics
    # retrieval-only lists are EASE's exact top K: the same NDCG@10 the evaluate stage measured
    ease = read_arrow(paths.evaluate("ease") / "metrics").to_pandas()
    expected = ease[
        (ease["split"] == "test") & (ease["metric"] == "ndcg") & (ease["k"] == 10) & (ease["bucket"] == "all")
    ]["value"].iloc[0]
    assert metrics["two_stage/retrieval_ndcg_at_10"] == pytest.approx(expected, abs=1e-9)
    assert 0.0 <= metrics["two_stage/reranked_ndcg_at_10"] <= 1.0
    assert metrics["two_stage/candidate_recall"] >= metrics["two_stage/reranked_recall_at_10"] - 1e-12
    assert stage.outputs == (paths.rerank("ranker", "ease"),)
    table = read_arrow(paths.rerank("ranker", "ease") / "metrics").to_pandas()
    assert set(table["order"]) == {"retrieval", "reranked"}
