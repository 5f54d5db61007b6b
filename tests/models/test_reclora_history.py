"""Point-in-time histories, the Long-Short retriever, Few2Many draws and prompt assembly (hand cases)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from models.reclora.conventional import long_history_items, user_vectors
from models.reclora.history import (
    NO_EVENT,
    EventLog,
    eval_indices,
    few2many_indices,
    recent_events,
    retrieve_events,
)
from models.reclora.prompts import ItemTexts, UserProfiles, build_prompts


def _log() -> EventLog:
    """User 2: items 10..15 at t = 100, 200, 300, 300, 400, 500 (given shuffled); user 3: item 11 at t=50."""
    events = pa.table(
        {
            "user_idx": [2, 2, 3, 2, 2, 2, 2],
            "item_idx": [13, 10, 11, 15, 12, 11, 14],
            "timestamp": [300, 100, 50, 500, 300, 200, 400],
            "rating": [4.0, 5.0, 1.0, 2.0, 3.0, None, 5.0],
        }
    )
    return EventLog.from_arrow(events, "events")


def _vectors() -> np.ndarray:
    """Unit vectors for items 0..15; item 14 and 15 point the same way as the target 9."""
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(16, 8))
    target = vectors[9] / np.linalg.norm(vectors[9])
    vectors[15] = target * 1.0 + 0.01 * rng.normal(size=8)  # later than the sample: must never be picked
    vectors[14] = target + 0.3 * rng.normal(size=8)
    vectors[10] = target + 0.6 * rng.normal(size=8)
    vectors[0:2] = 0.0
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def test_earlier_is_strictly_before_and_per_user() -> None:
    log = _log()
    assert log.items.tolist() == [10, 11, 12, 13, 14, 15, 11]  # user 2 by (time, item), then user 3
    start, end = log.earlier(np.array([2, 2, 2, 3, 4]), np.array([300, 301, 100, 60, 999]))
    assert [log.items[s:e].tolist() for s, e in zip(start, end, strict=True)] == [
        [10, 11],  # the two events at t=300 are not "before" a sample at t=300
        [10, 11, 12, 13],
        [],
        [11],
        [],  # unknown user
    ]


def test_recent_and_long_history_most_recent_first() -> None:
    log = _log()
    start, end = log.earlier(np.array([2, 2]), np.array([450, 150]))
    events = recent_events(start, end, 3)
    assert np.where(events != NO_EVENT, log.items[np.maximum(events, 0)], NO_EVENT).tolist() == [
        [14, 13, 12],
        [10, NO_EVENT, NO_EVENT],
    ]
    assert long_history_items(log, np.array([2]), np.array([450]), 10).tolist() == [
        [14, 13, 12, 11, 10] + [NO_EVENT] * 5
    ]


def test_retriever_picks_most_similar_earlier_items_never_later_ones() -> None:
    log, vectors = _log(), _vectors()
    start, end = log.earlier(np.array([2, 2, 3]), np.array([450, 450, 10]))
    picked = retrieve_events(log, start, end, np.array([9, 9, 9]), vectors, count=2)
    items = np.where(picked != NO_EVENT, log.items[np.maximum(picked, 0)], NO_EVENT)
    earlier = [10, 11, 12, 13, 14]
    sims = {i: float(vectors[i] @ vectors[9]) for i in earlier}
    best = sorted(earlier, key=lambda i: -sims[i])[:2]
    assert items[0].tolist() == best == [14, 10]
    assert 15 not in items  # the most similar item overall happens at t=500 > 450
    assert items[2].tolist() == [NO_EVENT, NO_EVENT]  # no history at all
    pooled = retrieve_events(log, start[:1], end[:1], np.array([9]), vectors, count=2, pool=2)
    assert set(log.items[pooled[0]].tolist()) <= {13, 14}  # only the 2 most recent earlier events searched


def test_retriever_ties_prefer_recent_and_pad_short_histories() -> None:
    log = _log()
    vectors = np.zeros((16, 2), dtype=np.float32)
    vectors[:, 0] = 1.0  # every item equally similar
    start, end = log.earlier(np.array([2]), np.array([250]))
    picked = retrieve_events(log, start, end, np.array([12]), vectors, count=3)
    assert log.items[picked[0, :2]].tolist() == [11, 10] and picked[0, 2] == NO_EVENT


def test_few2many_fraction_is_respected_and_seeded() -> None:
    drawn = few2many_indices(10_000, 0.05, seed=7)
    assert drawn.shape == (500,) and np.unique(drawn).shape == (500,)
    assert drawn.min() >= 0 and drawn.max() < 10_000 and np.all(np.diff(drawn) > 0)
    assert np.array_equal(drawn, few2many_indices(10_000, 0.05, seed=7))
    assert not np.array_equal(drawn, few2many_indices(10_000, 0.05, seed=8))
    assert few2many_indices(10, 1.0, seed=1).tolist() == list(range(10))
    assert few2many_indices(10, 0.001, seed=1).shape == (1,)
    assert eval_indices(100, None, 1).tolist() == list(range(100))
    assert eval_indices(100, 30, 1).shape == (30,)


def test_user_vector_is_user_row_and_mean_of_history_rows() -> None:
    user_rows = np.arange(12, dtype=np.float32).reshape(4, 3)
    history_rows = np.arange(30, dtype=np.float32).reshape(10, 3)
    long_items = np.array([[2, 4, NO_EVENT], [NO_EVENT, NO_EVENT, NO_EVENT]])
    got = user_vectors(user_rows, history_rows, np.array([3, 99]), long_items)
    assert got[0].tolist() == [9, 10, 11, 9, 10, 11]  # mean of rows 2 and 4 = [9, 10, 11]
    assert got[1].tolist() == [3, 4, 5, 0, 0, 0]  # unknown user -> OOV row 1; empty history -> zeros


def test_prompt_lists_target_profile_and_history_in_order() -> None:
    items = ItemTexts(["", "", "Heat", "Casino", "Fargo"], ["", "", "Action, Crime", "Drama", "Crime"])
    profiles = UserProfiles({7: "gender M, age 25"})
    prompts = build_prompts(
        np.array([7, 8]),
        np.array([2, 4]),
        np.array([[4, 3], [NO_EVENT, NO_EVENT]]),
        np.array([[5.0, np.nan], [np.nan, np.nan]]),
        items,
        profiles,
    )
    assert (
        prompts[0] == "Candidate: Heat (Action, Crime). User: gender M, age 25. Watched: Fargo 5/5; Casino."
    )
    assert prompts[1] == "Candidate: Fargo (Crime). User: unknown. Watched: nothing yet."
