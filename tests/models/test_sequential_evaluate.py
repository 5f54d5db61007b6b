"""Full-ranking evaluation of user/item vectors: seen items masked, rare-item bucket computed on the rare
targets only."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from models.sequential.evaluate import RankingEvaluator, few_interactions_bucket
from recsys.offline import InteractionData

NUM_USERS, NUM_ITEMS = 4, 7


def matrix(rows: list[tuple[int, int]]) -> sp.csr_matrix:
    users, items = zip(*rows, strict=True)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (users, items)), shape=(NUM_USERS, NUM_ITEMS))


def interactions(
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    test: sp.csr_matrix,
    sampled: dict[str, np.ndarray] | None = None,
) -> InteractionData:
    """The snapshot of three split matrices (train popularity), sampled in the splits given."""
    popularity = np.asarray(train.sum(axis=0)).ravel().astype(np.float64)
    return InteractionData(
        NUM_USERS,
        NUM_ITEMS,
        {"train": train, "valid": valid, "test": test},
        popularity,
        np.array([f"i{i}" for i in range(NUM_ITEMS)], dtype=object),
        None,
        "set",
        sampled_users=sampled or {},
    )


def test_rare_item_bucket_and_masking_match_hand_values() -> None:
    # item 2 is popular (3 train users), items 3..6 are rare (<= 1)
    train = matrix([(1, 2), (2, 2), (3, 2), (1, 3), (2, 4)])
    valid = matrix([(1, 5), (2, 6), (3, 3)])
    test = matrix([(1, 6), (2, 5), (3, 4)])
    data = interactions(train, valid, test)
    cfg = {"ks": [1, 3], "bucket_edges": [1], "batch_size": 2}
    evaluator = RankingEvaluator(data, cfg, few_interactions_max=1)
    # one-hot item vectors: a user's scores are its vector's entries
    items = np.eye(NUM_ITEMS, dtype=np.float32)
    users = np.array([1, 2, 3])
    scores = np.array(
        [
            [9, 9, 8, 7, 1, 5, 6],  # user 1: seen 2, 3, 5 masked; reserved 0, 1 masked -> [6, 4]
            [9, 9, 1, 2, 3, 4, 5],  # user 2: seen 2, 4, 6 masked -> [5, 3]
            [9, 9, 5, 4, 1, 2, 3],  # user 3: seen 2, 3 masked -> [6, 5, 4]
        ],
        dtype=np.float32,
    )
    result = evaluator.evaluate("test", users, scores, items)
    assert result.topk_items[:, :3].tolist() == [[6, 4, -1], [5, 3, -1], [6, 5, 4]]
    table = result.metrics
    ndcg3 = table[(table["metric"] == "ndcg") & (table["k"] == 3)].set_index("bucket")["value"]
    expected_all = (1.0 + 1.0 + 1.0 / math.log2(4)) / 3
    assert ndcg3["all"] == pytest.approx(expected_all)
    # every test target here is rare (popularity <= 1): the rare bucket sees all three users
    assert ndcg3[few_interactions_bucket(1)] == pytest.approx(expected_all)
    strict = RankingEvaluator(data, cfg, few_interactions_max=0).evaluate("test", users, scores, items)
    rare = strict.metrics[strict.metrics["bucket"] == "items_le0"]
    # with max 0 only never-trained targets count: items 5 and 6 (users 1 and 2), both ranked first
    assert rare[(rare["metric"] == "hit_rate") & (rare["k"] == 1)]["value"].item() == pytest.approx(1.0)


def test_only_the_sampled_users_are_evaluated() -> None:
    train = matrix([(1, 2), (2, 2), (3, 2)])
    test = matrix([(1, 6), (2, 5), (3, 4)])
    data = interactions(train, matrix([(1, 5)]), test, {"test": np.array([1, 3])})
    cfg = {"ks": [1], "bucket_edges": [1], "batch_size": 2}
    evaluator = RankingEvaluator(data, cfg, few_interactions_max=1)
    users = np.array([1, 2, 3])
    items = np.eye(NUM_ITEMS, dtype=np.float32)
    scores = np.array([[0, 0, 0, 0, 0, 0, 9], [0, 0, 0, 0, 0, 0, 9], [0, 0, 0, 0, 0, 9, 0]], dtype=np.float32)
    result = evaluator.evaluate("test", users, scores, items)
    # user 2 (a hit) is outside the sample; users 1 (hit on 6) and 3 (miss: 5 is not its item 4) remain
    assert result.users.tolist() == [1, 3]
    assert result.topk_items[:, 0].tolist() == [6, 5]
    hits = result.metrics[(result.metrics["metric"] == "hit_rate") & (result.metrics["bucket"] == "all")]
    assert hits["value"].item() == pytest.approx(0.5)
