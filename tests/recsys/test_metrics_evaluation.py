"""The evaluator: batched full-ranking top-K against a brute-force argsort, buckets, tables, MLflow keys."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recsys.evaluation import (
    activity_buckets,
    evaluate_ctr,
    evaluate_ranking,
    full_ranking_topk,
)
from recsys.metrics.beyond_accuracy import catalog_coverage
from recsys.metrics.classification import auc, gauc, log_loss
from recsys.metrics.ranking import ndcg_at_k, recall_at_k
from recsys.tracking.keys import metric_key, mlflow_key

RESERVED = np.array([0, 1])  # padding and OOV indices


def _brute_force_topk(
    scores: np.ndarray, users: np.ndarray, seen: np.ndarray, excluded: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Full argsort of every masked row: descending score, then ascending item index."""
    num_items = scores.shape[1]
    items = np.full((users.size, k), -1, dtype=np.int64)
    values = np.full((users.size, k), -np.inf, dtype=np.float32)
    for row, user in enumerate(users):
        masked = scores[user].astype(np.float32).copy()
        masked[seen[user]] = -np.inf
        masked[excluded] = -np.inf
        order = np.lexsort((np.arange(num_items), -masked))
        kept = [i for i in order if np.isfinite(masked[i])][:k]
        items[row, : len(kept)] = kept
        values[row, : len(kept)] = masked[kept]
    return items, values


@pytest.fixture
def dense_case() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(13, 17)).astype(np.float32)  # 4 distinct values: many ties
    seen = rng.random((13, 17)) < 0.3
    seen[5, :] = True  # user 5 has seen everything: an all-padding list
    seen[6, :] = True
    seen[6, [3, 9]] = False  # user 6 has only two items left
    return scores, seen


@pytest.mark.parametrize("batch_size", [1, 4, 5, 1024])
@pytest.mark.parametrize("k", [1, 6, 20])
def test_full_ranking_topk_matches_brute_force(
    dense_case: tuple[np.ndarray, np.ndarray], batch_size: int, k: int
) -> None:
    scores, seen = dense_case
    original = scores.copy()
    users = np.array([12, 0, 5, 3, 6, 7, 1, 9, 2, 11, 4])
    batches: list[int] = []

    def score_fn(batch: np.ndarray) -> np.ndarray:
        batches.append(batch.size)
        rows: np.ndarray = scores[batch]
        return rows

    items, values = full_ranking_topk(
        score_fn, users, sp.csr_matrix(seen), k, batch_size=batch_size, excluded_items=RESERVED
    )
    expected_items, expected_values = _brute_force_topk(scores, users, seen, RESERVED, k)
    assert items.dtype == np.int64 and values.dtype == np.float32
    np.testing.assert_array_equal(items, expected_items)
    np.testing.assert_array_equal(values, expected_values)
    assert max(batches) <= batch_size and sum(batches) == users.size
    assert (items[2] == -1).all()  # user 5: nothing left
    assert items[4, :2].tolist() == sorted(items[4, :2].tolist(), key=lambda i: (-scores[6, i], i))
    assert (items[4, 2:] == -1).all()
    np.testing.assert_array_equal(scores, original)


def test_full_ranking_topk_breaks_ties_by_lower_index_at_the_cut() -> None:
    scores = np.array([[5.0, 1.0, 3.0, 3.0, 3.0, 3.0, 0.5]], dtype=np.float32)
    items, values = full_ranking_topk(lambda b: scores[b], np.array([0]), sp.csr_matrix((1, 7)), k=3)
    assert items.tolist() == [[0, 2, 3]]
    assert values.tolist() == [[5.0, 3.0, 3.0]]


def test_full_ranking_topk_rejects_nan_and_bad_shapes() -> None:
    seen = sp.csr_matrix((2, 3))
    with pytest.raises(ValueError, match="NaN"):
        full_ranking_topk(lambda b: np.full((b.size, 3), np.nan), np.array([0, 1]), seen, k=2)
    with pytest.raises(ValueError, match="shape"):
        full_ranking_topk(lambda b: np.zeros(3), np.array([0]), seen, k=2)
    with pytest.raises(ValueError, match="columns"):
        full_ranking_topk(lambda b: np.zeros((b.size, 4)), np.array([0]), seen, k=2)


def test_activity_buckets_from_upper_edges() -> None:
    counts = np.array([0, 1, 5, 6, 20, 21, 100])
    assert activity_buckets(counts, [5, 20]).tolist() == ["0", "1-5", "1-5", "6-20", "6-20", "21+", "21+"]
    assert activity_buckets(np.array([1, 2, 3]), [1, 2]).tolist() == ["1", "2", "3+"]
    with pytest.raises(ValueError, match="increasing"):
        activity_buckets(counts, [20, 5])


def _value(table: pd.DataFrame, metric: str, k: int, bucket: str = "all") -> float:
    match = table[(table.metric == metric) & (table.k == k) & (table.bucket == bucket)]
    assert len(match) == 1, (metric, k, bucket)
    return float(match.value.iloc[0])


def test_evaluate_ranking_tidy_table_overall_and_per_bucket() -> None:
    topk = np.array([[2, 3, 4], [5, 2, -1], [3, 6, 7], [4, 5, 6]])
    relevant_rows, relevant_cols = [0, 0, 1, 2], [3, 9, 5, 8]  # user 3 has no relevant item
    truth = sp.csr_matrix((np.ones(4), (relevant_rows, relevant_cols)), shape=(4, 10))
    popularity = np.arange(10, dtype=np.float64)
    popularity[0] = 0.0
    buckets = np.array(["6-20", "1-5", "1-5", "21+"])
    embeddings = np.eye(10)
    table = evaluate_ranking(
        topk,
        truth,
        [1, 3],
        item_popularity=popularity,
        num_items=8,
        buckets=buckets,
        item_embeddings=embeddings,
    )
    assert list(table.columns) == ["metric", "k", "bucket", "value"]
    assert table.k.dtype == np.int64 and table.value.dtype == np.float64
    names = {"recall", "precision", "hit_rate", "ndcg", "mrr", "map", "coverage", "gini", "novelty", "arp"}
    assert set(table.metric) == names | {"intra_list_diversity"}
    assert list(dict.fromkeys(table.bucket)) == ["all", "1-5", "6-20", "21+"]
    assert len(table) == 2 * 4 * 11
    # Users 0-2 have relevant items: NDCG@3 = mean(1/log2(3) / (1 + 1/log2(3)), 1, 0); user 3 excluded.
    assert _value(table, "ndcg", 3) == pytest.approx(np.mean(ndcg_at_k(topk, truth, 3)[:3]))
    assert _value(table, "ndcg", 3) == pytest.approx((1 / math.log2(3) / (1 + 1 / math.log2(3)) + 1) / 3)
    assert _value(table, "recall", 3, "1-5") == pytest.approx(np.mean(recall_at_k(topk, truth, 3)[1:3]))
    assert _value(table, "recall", 3, "1-5") == pytest.approx(0.5)
    assert _value(table, "hit_rate", 1) == pytest.approx(1 / 3)
    assert math.isnan(_value(table, "ndcg", 3, "21+"))  # only a user without relevant items
    # Coverage uses every list: items {2..7} of 8; bucket 1-5 recommends {2, 3, 5, 6, 7}.
    assert _value(table, "coverage", 3) == pytest.approx(6 / 8)
    assert _value(table, "coverage", 3, "1-5") == pytest.approx(5 / 8)
    assert _value(table, "coverage", 1) == pytest.approx(catalog_coverage(topk[:, :1], 8))
    assert _value(table, "arp", 1) == pytest.approx(np.mean([2, 5, 3, 4]))
    assert _value(table, "intra_list_diversity", 3) == pytest.approx(1.0)  # orthogonal embeddings
    assert math.isnan(_value(table, "intra_list_diversity", 1))


def test_evaluate_ranking_without_buckets_or_embeddings() -> None:
    topk = np.array([[0, 1], [1, 0]])
    truth = sp.csr_matrix(np.array([[1, 1], [1, 1]]))
    table = evaluate_ranking(topk, truth, [2], item_popularity=np.ones(2), num_items=2)
    assert set(table.bucket) == {"all"}
    assert "intra_list_diversity" not in set(table.metric)
    for metric in ("recall", "precision", "ndcg", "map", "mrr", "hit_rate", "coverage"):
        assert _value(table, metric, 2) == pytest.approx(1.0), metric
    assert _value(table, "gini", 2) == pytest.approx(0.0)
    assert _value(table, "novelty", 2) == pytest.approx(1.0)  # p = 1/2 each: one bit


def test_evaluate_ctr_tidy_rows_equal_the_metric_functions() -> None:
    labels = np.array([1, 0, 0, 1, 0, 1])
    scores = np.array([0.9, 0.2, 0.6, 0.4, 0.7, 0.8])
    groups = np.array([0, 0, 0, 1, 1, 2])
    table = evaluate_ctr(labels, scores, groups)
    assert table.metric.tolist() == ["auc", "gauc", "logloss"]
    assert set(table.k) == {0} and set(table.bucket) == {"all"}
    assert _value(table, "auc", 0) == pytest.approx(auc(labels, scores))
    assert _value(table, "gauc", 0) == pytest.approx(gauc(labels, scores, groups))
    assert _value(table, "gauc", 0) == pytest.approx((3 * 1.0 + 2 * 0.0) / 5)
    assert _value(table, "logloss", 0) == pytest.approx(log_loss(labels, scores))


MLFLOW_SAFE = re.compile(r"^[\w/.\- ]+$")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("test", "ndcg", 10), "test/ndcg_at_10"),
        (("test", "ndcg", 10, "6-20"), "test/ndcg_at_10/bucket_6-20"),
        (("val", "recall", 20, "21+"), "val/recall_at_20/bucket_21plus"),
        # The evaluation split `valid` is spelled `val` in every key (as the Lightning modules log it).
        (("valid", "ndcg", 10), "val/ndcg_at_10"),
        (("valid", "recall", 20, "21+"), "val/recall_at_20/bucket_21plus"),
        (("test", "auc", 0), "test/auc"),
        (("test", "hit_rate", 5, "a@b"), "test/hit_rate_at_5/bucket_a_b"),
    ],
)
def test_metric_key_is_mlflow_safe(
    args: tuple[str, str, int] | tuple[str, str, int, str], expected: str
) -> None:
    key = metric_key(*args)
    assert key == expected
    assert MLFLOW_SAFE.match(key) and key.isascii()


def test_metric_key_rejects_an_empty_split_or_metric_and_a_negative_cutoff() -> None:
    for args in (("", "ndcg", 10), ("test", "", 10), ("test", "ndcg", -1)):
        with pytest.raises(ValueError, match="need a split"):
            metric_key(*args)


def test_mlflow_key_replaces_only_characters_mlflow_rejects() -> None:
    assert mlflow_key("train_reclora/personalized+retriever/test/auc_mean") == (
        "train_reclora/personalized_retriever/test/auc_mean"
    )
    assert mlflow_key("a@b c:d.e-f/g_h") == "a_b c:d.e-f/g_h"


def test_metric_keys_of_a_whole_table_are_safe_and_unique() -> None:
    topk = np.array([[0, 1], [1, 0]])
    truth = sp.csr_matrix(np.eye(2))
    buckets = activity_buckets(np.array([3, 30]), [5, 20])
    table = evaluate_ranking(topk, truth, [1, 2], item_popularity=np.ones(2), num_items=2, buckets=buckets)
    keys = [metric_key("test", m, k, b) for m, k, b in zip(table.metric, table.k, table.bucket, strict=True)]
    assert len(set(keys)) == len(keys)
    assert all(MLFLOW_SAFE.match(key) for key in keys)
