"""``evaluation.max_users``: a seeded sample of the evaluated users, the same for every model, named in the
evaluation set, and scoring each sampled user exactly as the full evaluation does."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from recsys.baselines import build_baseline
from recsys.config import compose, to_plain
from recsys.errors import ConfigError
from recsys.evaluation import evaluate_ranking
from recsys.offline import evaluate_scorer, load_interactions, sample_users
from recsys.schema import FIRST_INDEX
from recsys.settings import EvaluationConfig
from recsys.structured import typed
from tests.pipelines.conftest import Reference

DATE = "1998-04-23"  # the demo pipeline's run.date, which the reference run keeps


def _eval_cfg(**values: object) -> dict[str, Any]:
    return {**to_plain(compose([]))["evaluation"], **values}


def test_sample_is_seeded_sorted_and_a_subset() -> None:
    users = np.arange(10, 1010, dtype=np.int64)
    first = sample_users(users, 100, seed=7)
    assert first is not None
    assert first.size == 100 and np.unique(first).size == 100
    assert np.all(np.diff(first) > 0) and np.isin(first, users).all()
    again = sample_users(users, 100, seed=7)
    assert again is not None and np.array_equal(first, again)
    other = sample_users(users, 100, seed=8)
    assert other is not None and not np.array_equal(first, other)
    # nothing to sample: as many users as allowed, or no limit
    assert sample_users(users, 1000, seed=7) is None
    assert sample_users(users, None, seed=7) is None


def test_max_users_below_one_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"evaluation\.max_users=0.*null"):
        typed(EvaluationConfig, _eval_cfg(max_users=0), "evaluation")


@pytest.mark.parametrize("model", ["mostpop", "puresvd"])
def test_sampled_evaluation_scores_the_sampled_users_as_the_full_one(
    reference_run: Reference, model: str
) -> None:
    features = reference_run.root / DATE / "features"
    full = load_interactions(features, _eval_cfg())
    test_users = full.evaluated_users("test")
    limit = test_users.size // 3
    sampled = load_interactions(features, _eval_cfg(max_users=limit, sample_seed=5))

    # the sample is named in the evaluation set, so the promotion gate never compares it with a full run
    assert sampled.eval_set == f"{full.eval_set}-users{limit}s5"
    assert load_interactions(features, _eval_cfg(max_users=test_users.size)).eval_set == full.eval_set
    chosen = sampled.evaluated_users("test")
    assert chosen.size == limit and np.isin(chosen, test_users).all()

    scorer = build_baseline(to_plain(compose([f"model={model}"]))["model"], seed=0)
    scorer.fit(full.matrices["train"])
    cfg = _eval_cfg()
    whole = evaluate_scorer(scorer, full, cfg)["test"]
    part = evaluate_scorer(scorer, sampled, cfg)["test"]
    assert np.array_equal(part.users, chosen)
    rows = np.searchsorted(whole.users, chosen)
    assert np.array_equal(part.topk_items, whole.topk_items[rows])
    # the sample's metrics are the full evaluation's per-user values averaged over the sampled users
    expected = evaluate_ranking(
        whole.topk_items[rows],
        full.matrices["test"][chosen],
        [int(k) for k in cfg["ks"]],
        item_popularity=full.item_popularity,
        num_items=full.num_items - FIRST_INDEX,
        item_embeddings=full.content_vectors,
    )
    overall = part.metrics[part.metrics["bucket"] == "all"].reset_index(drop=True)
    merged = overall.merge(expected, on=["metric", "k", "bucket"], suffixes=("", "_expected"))
    assert len(merged) == len(expected) == len(overall)
    np.testing.assert_allclose(merged["value"], merged["value_expected"], equal_nan=True)
