"""Baselines against independent computations on tiny matrices."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.baselines import EASE, ItemKNN, MostPop, PureSVD, build_baseline
from recsys.config import compose, to_plain
from recsys.errors import ConfigError

X = sp.csr_matrix(
    np.array(
        [
            [1, 1, 0, 0, 1],
            [1, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 0, 1, 1],
            [0, 0, 1, 1, 0],
        ],
        dtype=np.float32,
    )
)


def test_mostpop_scores_are_train_counts() -> None:
    model = MostPop()
    model.fit(X)
    scores = model.score(X[[0, 1]])
    assert scores.tolist() == [[3, 3, 3, 3, 2]] * 2


def test_itemknn_cosine_with_shrink_by_hand() -> None:
    model = ItemKNN(neighbors=10, shrink=1.0)
    model.fit(X)
    sim = model.similarity.toarray()
    # items 0 and 1 share users {0, 3}; |item0| = 3, |item1| = 3 -> 2 / (sqrt(3) * sqrt(3) + 1) = 0.5
    assert sim[0, 1] == pytest.approx(0.5)
    assert np.all(np.diag(sim) == 0)
    history = sp.csr_matrix(np.array([[1, 0, 0, 0, 0]], dtype=np.float32))
    assert model.score(history)[0].tolist() == pytest.approx(sim[0].tolist())


def test_itemknn_keeps_only_top_neighbours() -> None:
    model = ItemKNN(neighbors=1, shrink=0.0)
    model.fit(X)
    assert np.all(np.diff(model.similarity.tocsc().indptr) <= 1)


def test_itemknn_blockwise_equals_one_block() -> None:
    rng = np.random.default_rng(0)
    train = sp.random(60, 23, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    whole = ItemKNN(neighbors=4, shrink=2.0, block_items=23)
    whole.fit(train)
    for block in (1, 5, 22):
        blocked = ItemKNN(neighbors=4, shrink=2.0, block_items=block)
        blocked.fit(train)
        assert (blocked.similarity != whole.similarity).nnz == 0, block
    assert whole.similarity.nnz > 0
    assert np.all(np.diff(whole.similarity.tocsc().indptr) <= 4)
    assert np.all(whole.similarity.diagonal() == 0)


def test_itemknn_refuses_an_empty_block() -> None:
    with pytest.raises(ConfigError, match="block_items"):
        ItemKNN(block_items=0).fit(X)


def test_ease_matches_columnwise_ridge_with_zero_diagonal() -> None:
    l2 = 2.0
    model = EASE(l2=l2)
    model.fit(X)
    dense = X.toarray().astype(np.float64)
    n = dense.shape[1]
    expected = np.zeros((n, n))
    for j in range(n):
        others = [i for i in range(n) if i != j]
        a = dense[:, others]
        expected[others, j] = np.linalg.solve(a.T @ a + l2 * np.eye(n - 1), a.T @ dense[:, j])
    np.testing.assert_allclose(model.weights, expected, atol=1e-5)
    np.testing.assert_allclose(model.score(X[[2]]), dense[[2]] @ expected, atol=1e-5)


def test_ease_refuses_catalogs_above_the_cap() -> None:
    with pytest.raises(ConfigError, match=r"max_items=3"):
        EASE(max_items=3).fit(X)


def test_puresvd_scores_are_inner_products_of_orthonormal_factors() -> None:
    model = PureSVD(dim=3, seed=1)
    model.fit(X)
    v = model.item_vectors()
    assert v.shape == (5, 3)
    np.testing.assert_allclose(v.T @ v, np.eye(3), atol=1e-5)
    np.testing.assert_allclose(model.score(X[[0, 4]]), model.user_vectors(X[[0, 4]]) @ v.T, atol=1e-6)
    # The leading factor captures more of X than the last one (sorted singular values).
    energy = np.linalg.norm(X.toarray() @ v, axis=0)
    assert energy[0] >= energy[-1]


def test_unknown_baseline_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a baseline"):
        build_baseline({"name": "bpr", "family": "baseline", "params": {}}, 0)


def test_baselines_are_built_from_their_composed_model_configs() -> None:
    built = {
        name: build_baseline(to_plain(compose([f"model={name}"]))["model"], seed=3)
        for name in ("mostpop", "itemknn", "ease", "puresvd")
    }
    assert built["mostpop"] == MostPop()
    assert built["itemknn"] == ItemKNN(neighbors=100, shrink=10.0, block_items=2048)
    assert built["ease"] == EASE(l2=500.0, max_items=20000)
    assert built["puresvd"] == PureSVD(dim=64, seed=3)


def test_baseline_params_are_checked_with_the_key_named() -> None:
    params = {"neighbors": 5, "shrink": 1.0, "block_items": 64}
    itemknn = {"name": "itemknn", "family": "baseline", "params": params}
    assert build_baseline(itemknn, 0) == ItemKNN(neighbors=5, shrink=1.0, block_items=64)
    with pytest.raises(ConfigError, match=r"model\.params\.neighbours"):
        build_baseline({**itemknn, "params": {**params, "neighbours": 5}}, 0)
    with pytest.raises(ConfigError, match=r"model\.params\.neighbors"):
        build_baseline({**itemknn, "params": {**params, "neighbors": "many"}}, 0)
    with pytest.raises(ConfigError, match=r"model\.params\.shrink"):
        build_baseline({**itemknn, "params": {"neighbors": 5, "block_items": 64}}, 0)
