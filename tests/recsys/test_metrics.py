"""Ranking, CTR and beyond-accuracy metrics: hand-computed cases, limits, and cross-checks against
pytrec_eval and scikit-learn."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import pytrec_eval
import scipy.sparse as sp
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from recsys.metrics.beyond_accuracy import (
    average_recommendation_popularity,
    average_recommendation_popularity_per_user,
    catalog_coverage,
    gini_index,
    intra_list_diversity,
    intra_list_diversity_per_user,
    intra_list_diversity_prefixes,
    novelty,
    novelty_per_user,
    self_information,
)
from recsys.metrics.classification import auc, gauc, log_loss, rmse
from recsys.metrics.ranking import (
    RANKING_METRICS,
    hit_rate_at_k,
    hits,
    map_at_k,
    mrr_at_k,
    ndcg_at_k,
    per_user_ranking_metrics,
    precision_at_k,
    recall_at_k,
)

NUM_ITEMS = 10
# User 0: relevant {1, 5, 8}, hits at ranks 2 and 4. User 1: one relevant item, list padded after rank 1.
# User 2: no relevant item (metrics undefined).
TOPK = np.array([[3, 1, 7, 5, 9], [2, -1, -1, -1, -1], [0, 4, 6, 8, 9]], dtype=np.int64)
RELEVANT = [[1, 5, 8], [2], []]
INV_LOG2_3 = 1.0 / math.log2(3)  # discount at rank 2
INV_LOG2_5 = 1.0 / math.log2(5)  # discount at rank 4


def _truth(relevant: list[list[int]], num_items: int) -> sp.csr_matrix:
    rows = [u for u, items in enumerate(relevant) for _ in items]
    cols = [i for items in relevant for i in items]
    return sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(relevant), num_items))


TRUTH = _truth(RELEVANT, NUM_ITEMS)


def test_hits_marks_relevant_slots_and_never_padding() -> None:
    expected = np.array(
        [[False, True, False, True, False], [True, False, False, False, False], [False] * 5], dtype=bool
    )
    np.testing.assert_array_equal(hits(TOPK, TRUTH), expected)


def test_hits_ignores_stored_zeros_and_sums_duplicates() -> None:
    truth = sp.csr_matrix(
        (np.array([1.0, 0.0, 1.0]), np.array([3, 1, 3]), np.array([0, 3])), shape=(1, NUM_ITEMS)
    )
    np.testing.assert_array_equal(hits(np.array([[1, 3, -1]]), truth), [[False, True, False]])


@pytest.mark.parametrize(
    ("metric", "k", "expected"),
    [
        (recall_at_k, 5, [2 / 3, 1.0]),
        (recall_at_k, 2, [1 / 3, 1.0]),
        (precision_at_k, 5, [2 / 5, 1 / 5]),
        (precision_at_k, 2, [1 / 2, 1 / 2]),
        (hit_rate_at_k, 5, [1.0, 1.0]),
        (hit_rate_at_k, 1, [0.0, 1.0]),
        (ndcg_at_k, 5, [(INV_LOG2_3 + INV_LOG2_5) / (1 + INV_LOG2_3 + 1 / 2), 1.0]),
        (ndcg_at_k, 2, [INV_LOG2_3 / (1 + INV_LOG2_3), 1.0]),
        (ndcg_at_k, 1, [0.0, 1.0]),
        (mrr_at_k, 5, [1 / 2, 1.0]),
        (mrr_at_k, 1, [0.0, 1.0]),
        # AP@5 = (P@2 + P@4) / min(3, 5) = (1/2 + 2/4) / 3; AP@2 = P@2 / min(3, 2).
        (map_at_k, 5, [1 / 3, 1.0]),
        (map_at_k, 2, [1 / 4, 1.0]),
        (map_at_k, 1, [0.0, 1.0]),
    ],
)
def test_ranking_metrics_hand_computed(
    metric: Callable[[np.ndarray, sp.csr_matrix, int], np.ndarray], k: int, expected: list[float]
) -> None:
    values = metric(TOPK, TRUTH, k)
    assert values.dtype == np.float64
    assert values[:2] == pytest.approx(expected, abs=1e-12)
    assert np.isnan(values[2])  # no relevant item: undefined, excluded by the caller


def test_ndcg_hand_value_in_digits() -> None:
    # DCG = 1/log2(3) + 1/log2(5) = 1.06160631; IDCG = 1 + 1/log2(3) + 1/log2(4) = 2.13092975.
    assert ndcg_at_k(TOPK, TRUTH, 5)[0] == pytest.approx(0.4981893, abs=1e-7)


def test_perfect_ranking_is_one_and_no_hits_is_zero() -> None:
    relevant = [[4, 2], [7, 1, 3], [0, 5, 6, 8, 9, 2]]  # the third user has more relevant items than k
    truth = _truth(relevant, NUM_ITEMS)
    perfect = np.array([[4, 2, 0, 1, 3], [7, 1, 3, -1, -1], [0, 5, 6, 8, 9]])
    for metric in (ndcg_at_k, mrr_at_k, map_at_k, hit_rate_at_k):
        assert metric(perfect, truth, 5) == pytest.approx([1.0, 1.0, 1.0])
    assert recall_at_k(perfect, truth, 5) == pytest.approx([1.0, 1.0, 5 / 6])
    misses = np.array([[0, 1, 3, 5, 6], [0, 2, 4, 5, 6], [1, 3, 4, 7, -1]])
    for name, values in per_user_ranking_metrics(misses, truth, [1, 3, 5]).items():
        assert values == pytest.approx([0.0, 0.0, 0.0]), name


def test_per_user_ranking_metrics_matches_single_functions() -> None:
    functions = {
        "recall": recall_at_k,
        "precision": precision_at_k,
        "hit_rate": hit_rate_at_k,
        "ndcg": ndcg_at_k,
        "mrr": mrr_at_k,
        "map": map_at_k,
    }
    table = per_user_ranking_metrics(TOPK, TRUTH, [1, 3, 5])
    assert set(table) == {(name, k) for name in RANKING_METRICS for k in (1, 3, 5)}
    for (name, k), values in table.items():
        np.testing.assert_array_equal(values, functions[name](TOPK, TRUTH, k))


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError, match="cut-off"):
        ndcg_at_k(TOPK, TRUTH, 6)
    with pytest.raises(ValueError, match="repeats"):
        recall_at_k(np.array([[1, 2, 1]]), _truth([[1]], NUM_ITEMS), 3)
    with pytest.raises(ValueError, match="columns"):
        hits(np.array([[NUM_ITEMS]]), _truth([[1]], NUM_ITEMS))
    with pytest.raises(ValueError, match="rows"):
        hits(TOPK, _truth([[1]], NUM_ITEMS))


def _random_lists(
    seed: int, num_users: int, num_items: int, list_length: int
) -> tuple[np.ndarray, list[list[int]]]:
    """Top-K lists that mix relevant and random items; some lists are short (padded with -1)."""
    rng = np.random.default_rng(seed)
    topk = np.full((num_users, list_length), -1, dtype=np.int64)
    relevant = []
    for u in range(num_users):
        rel = rng.choice(num_items, size=int(rng.integers(1, 31)), replace=False)
        relevant.append(rel.tolist())
        pool = np.concatenate(
            [rng.choice(rel, size=min(rel.size, 8), replace=False), rng.permutation(num_items)]
        )
        _, first = np.unique(pool, return_index=True)
        candidates = pool[np.sort(first)]
        rng.shuffle(candidates[:30])
        length = list_length if rng.random() < 0.8 else int(rng.integers(1, list_length))
        topk[u, :length] = candidates[:length]
    return topk, relevant


def test_ranking_metrics_match_pytrec_eval() -> None:
    k = 10
    topk, relevant = _random_lists(seed=0, num_users=200, num_items=500, list_length=20)
    truth = _truth(relevant, 500)
    qrels = {f"u{u}": {f"d{i}": 1 for i in rel} for u, rel in enumerate(relevant)}
    # Strictly decreasing scores reproduce our order exactly (trec_eval breaks score ties by doc id).
    run = {
        f"u{u}": {f"d{item}": float(k - r) for r, item in enumerate(row[:k]) if item != -1}
        for u, row in enumerate(topk)
    }
    measures = {"ndcg_cut_10", "recall_10", "P_10", "map_cut_10", "recip_rank"}
    trec = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    ours = per_user_ranking_metrics(topk, truth, [k])
    num_relevant = np.array([len(rel) for rel in relevant])
    assert (num_relevant > k).any() and (num_relevant <= k).any()
    assert 0 < ours[("ndcg", k)].mean() < 1
    for u in range(len(relevant)):
        got = trec[f"u{u}"]
        assert ours[("ndcg", k)][u] == pytest.approx(got["ndcg_cut_10"], abs=1e-6)
        assert ours[("recall", k)][u] == pytest.approx(got["recall_10"], abs=1e-6)
        assert ours[("precision", k)][u] == pytest.approx(got["P_10"], abs=1e-6)
        assert ours[("mrr", k)][u] == pytest.approx(got["recip_rank"], abs=1e-6)
        # trec_eval normalises AP by R, ours by min(R, k): equal when R <= k, scaled otherwise.
        scale = min(num_relevant[u], k) / num_relevant[u]
        assert ours[("map", k)][u] * scale == pytest.approx(got["map_cut_10"], abs=1e-6)


def test_auc_with_ties_hand_computed() -> None:
    # Pairs (pos, neg): (.8, .8) ties = 1/2, (.8, .1) = 1, (.3, .8) = 0, (.3, .1) = 1 -> 2.5 / 4.
    assert auc([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1]) == pytest.approx(0.625)
    assert auc([1, 0, 1, 0], [0.9, 0.1, 0.8, 0.2]) == pytest.approx(1.0)
    assert auc([1, 0], [0.0, 1.0]) == pytest.approx(0.0)
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_gauc_weights_by_group_size_and_skips_single_class_groups() -> None:
    labels = [1, 0, 0, 1, 0, 1, 1]
    scores = [0.9, 0.1, 0.5, 0.2, 0.7, 0.4, 0.6]
    groups = ["a", "a", "a", "b", "b", "c", "c"]
    # a: AUC 1 over 3 samples; b: AUC 0 over 2 samples; c: only positives, skipped.
    assert gauc(labels, scores, groups) == pytest.approx((3 * 1.0 + 2 * 0.0) / 5)
    assert math.isnan(gauc([1, 0], [0.3, 0.2], [1, 2]))


def test_auc_and_gauc_match_sklearn_on_random_data_with_ties() -> None:
    rng = np.random.default_rng(1)
    size = 5000
    labels = rng.integers(0, 2, size)
    scores = np.round(rng.random(size) + 0.3 * labels, 1)  # rounding creates many ties
    groups = rng.integers(0, 300, size)
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    weighted, total = 0.0, 0
    for g in np.unique(groups):
        member = groups == g
        if np.unique(labels[member]).size == 2:
            weighted += member.sum() * roc_auc_score(labels[member], scores[member])
            total += member.sum()
    assert gauc(labels, scores, groups) == pytest.approx(weighted / total, abs=1e-6)


def test_log_loss_matches_sklearn_and_clips() -> None:
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 1000)
    probabilities = rng.uniform(0.01, 0.99, 1000)
    assert log_loss(labels, probabilities) == pytest.approx(sk_log_loss(labels, probabilities), abs=1e-6)
    assert log_loss([1, 0], [0.5, 0.5]) == pytest.approx(math.log(2))
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7))
    with pytest.raises(ValueError, match="binary"):
        log_loss([2], [0.5])


def test_rmse_hand_computed() -> None:
    assert rmse([1.0, 2.0, 3.0], [1.0, 2.0, 5.0]) == pytest.approx(math.sqrt(4 / 3))
    assert rmse([4.0], [4.0]) == 0.0


def test_catalog_coverage_counts_distinct_items_over_catalog() -> None:
    assert catalog_coverage(np.array([[0, 1], [1, 2], [2, -1]]), 10) == pytest.approx(0.3)
    assert catalog_coverage(np.array([[-1, -1]]), 10) == 0.0
    with pytest.raises(ValueError, match="catalog"):
        catalog_coverage(np.array([[0, 1, 2]]), 2)


def test_gini_even_concentrated_and_hand_case() -> None:
    assert gini_index(np.array([[0, 1], [2, 3]]), 4) == pytest.approx(0.0)
    assert gini_index(np.array([[0], [0]]), 4) == pytest.approx(3 / 4)  # (n - 1) / n
    # Counts over a 3-item catalog: [0, 1, 3] -> (-2*0 + 0*1 + 2*3) / (3 * 4).
    assert gini_index(np.array([[0, 1], [1, -1], [1, -1]]), 3) == pytest.approx(0.5)
    assert math.isnan(gini_index(np.array([[-1]]), 3))


POPULARITY = np.array([2.0, 6.0, 0.0, 0.0])  # p = [1/4, 3/4, 0, 0]; zero floor = 1/2 * 1/4


def test_self_information_and_novelty_hand_computed() -> None:
    bits = self_information(POPULARITY)
    assert bits == pytest.approx([2.0, -math.log2(0.75), 3.0, 3.0])
    topk = np.array([[0, 2], [1, -1], [-1, -1]])
    per_user = novelty_per_user(topk, POPULARITY)
    assert per_user[:2] == pytest.approx([2.5, -math.log2(0.75)])
    assert np.isnan(per_user[2])
    assert novelty(topk, POPULARITY) == pytest.approx((2.5 - math.log2(0.75)) / 2)


def test_average_recommendation_popularity_hand_computed() -> None:
    topk = np.array([[0, 2], [1, -1]])
    assert average_recommendation_popularity_per_user(topk, POPULARITY) == pytest.approx([1.0, 6.0])
    assert average_recommendation_popularity(topk, POPULARITY) == pytest.approx(3.5)


EMBEDDINGS = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])


def test_intra_list_diversity_hand_computed() -> None:
    # Distances: (0, 1) = 1, (0, 2) = (1, 2) = 1 - 1/sqrt(2); the zero vector is at distance 1 from all.
    far = 1 - 1 / math.sqrt(2)
    topk = np.array([[0, 1, 2], [0, -1, 1], [3, 0, -1], [2, -1, -1]])
    prefixes = intra_list_diversity_prefixes(topk, EMBEDDINGS)
    assert np.isnan(prefixes[:, 0]).all()
    assert prefixes[0, 1:] == pytest.approx([1.0, (1 + 2 * far) / 3])
    assert prefixes[1, 1:] == pytest.approx([math.nan, 1.0], nan_ok=True)
    per_user = intra_list_diversity_per_user(topk, EMBEDDINGS)
    assert per_user[:3] == pytest.approx([(1 + 2 * far) / 3, 1.0, 1.0])
    assert np.isnan(per_user[3])
    assert intra_list_diversity(topk, EMBEDDINGS) == pytest.approx(((1 + 2 * far) / 3 + 2.0) / 3)


def test_intra_list_diversity_matches_pairwise_loop() -> None:
    rng = np.random.default_rng(3)
    embeddings = rng.normal(size=(50, 8))
    topk = np.stack([rng.choice(50, size=6, replace=False) for _ in range(40)])
    topk[::7, 4:] = -1
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    expected = []
    for row in topk:
        items = row[row != -1]
        pairs = [(i, j) for a, i in enumerate(items) for j in items[a + 1 :]]
        expected.append(np.mean([1 - unit[i] @ unit[j] for i, j in pairs]))
    assert intra_list_diversity_per_user(topk, embeddings) == pytest.approx(expected, abs=1e-9)
