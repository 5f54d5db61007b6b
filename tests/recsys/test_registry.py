"""The promotion gate as a pure decision."""

from __future__ import annotations

from recsys.tracking.registry import decide_promotion

METRIC = "test/ndcg_at_10"


def test_first_model_becomes_champion() -> None:
    assert decide_promotion(METRIC, {METRIC: 0.1}, "set-a", None, None).promote


def test_better_challenger_on_same_set_is_promoted() -> None:
    decision = decide_promotion(METRIC, {METRIC: 0.2}, "set-a", {METRIC: 0.1}, "set-a")
    assert decision.promote and "0.200000 > champion 0.100000" in decision.reason


def test_worse_or_equal_challenger_is_not_promoted() -> None:
    assert not decide_promotion(METRIC, {METRIC: 0.1}, "set-a", {METRIC: 0.2}, "set-a").promote
    assert not decide_promotion(METRIC, {METRIC: 0.2}, "set-a", {METRIC: 0.2}, "set-a").promote
    assert not decide_promotion(
        METRIC, {METRIC: 0.25}, "set-a", {METRIC: 0.2}, "set-a", min_improvement=0.1
    ).promote


def test_different_evaluation_sets_are_never_compared() -> None:
    decision = decide_promotion(METRIC, {METRIC: 0.9}, "set-b", {METRIC: 0.1}, "set-a")
    assert not decision.promote and "not comparable" in decision.reason


def test_missing_metric_blocks_promotion() -> None:
    assert not decide_promotion(METRIC, {"test/recall_at_10": 0.5}, "set-a", None, None).promote


def test_a_champion_whose_run_failed_gives_way_to_a_finished_run() -> None:
    # Killed after registering, before its stage finished: even an equal challenger replaces it.
    decision = decide_promotion(METRIC, {METRIC: 0.2}, "set-a", {METRIC: 0.2}, "set-a", champion_failed=True)
    assert decision.promote and "failed" in decision.reason
    assert not decide_promotion(METRIC, {}, "set-a", {METRIC: 0.2}, "set-a", champion_failed=True).promote
