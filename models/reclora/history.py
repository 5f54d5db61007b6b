"""Point-in-time user histories, the Long-Short Modality Retriever, and the Few2Many / evaluation draws.

Shapes: N samples, E events, P history events searched per sample, K items kept, D content-vector width.

Every history here holds only events with a timestamp strictly smaller than the sample's (the CTR
features' no-leakage rule), whatever split those events belong to: a test sample at time t may use events
of the valid period before t, which were known at t.

- long side (conventional model): the ``long_history`` most recent earlier items;
- short side (LM prompt): with the retriever, the K earlier items whose content vectors have the highest
  cosine to the target item (ties: the more recent first); without it, the K most recent. Both are
  returned most relevant first, which is the order the prompt lists them in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from recsys.errors import InputError
from recsys.schema import ITEM_IDX, RATING, TIMESTAMP, USER_IDX

NO_EVENT = -1
"""Padding in event-index matrices."""
_USER_SHIFT = 32
"""Events are searched by ``user << 32 | timestamp``; timestamps are int seconds below 2**31."""
_CHUNK_ROWS = 512
"""Samples whose similarities are computed at once (bounds the ``[chunk, N_items]`` score block)."""
_FEW2MANY_STREAM = 1
_EVAL_STREAM = 2


@dataclass(frozen=True)
class EventLog:
    """Every interaction sorted by (user, timestamp, item): ``[E]`` arrays."""

    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    ratings: np.ndarray  # float64, NaN when the event has no rating

    @classmethod
    def from_arrow(cls, events: pa.Table, source: str) -> EventLog:
        """From the features ``split`` output (``user_idx, item_idx, timestamp, rating``).

        Raises:
            InputError: a column is missing or a timestamp does not fit the search key.
        """
        for column in (USER_IDX, ITEM_IDX, TIMESTAMP, RATING):
            if column not in events.column_names:
                raise InputError(f"{source}: column {column!r} missing; found {events.column_names}.")
        users = np.asarray(events[USER_IDX].to_numpy(), dtype=np.int64)
        items = np.asarray(events[ITEM_IDX].to_numpy(), dtype=np.int64)
        times = np.asarray(events[TIMESTAMP].to_numpy(), dtype=np.int64)
        ratings = np.asarray(events[RATING].to_numpy(zero_copy_only=False), dtype=np.float64)
        if times.size and (times.min() < 0 or times.max() >= 2**31):
            raise InputError(
                f"{source}: column 'timestamp' must be int seconds in [0, 2**31); e.g. {times[0]}."
            )
        order = np.lexsort((items, times, users))
        return cls(users[order], items[order], times[order], ratings[order])

    def earlier(self, users: np.ndarray, timestamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(start [N], end [N])``: the user's events strictly before each timestamp are ``[start, end)``."""
        keys = (self.users << _USER_SHIFT) | self.timestamps
        users64 = np.asarray(users, dtype=np.int64)
        start = np.searchsorted(keys, users64 << _USER_SHIFT, side="left")
        end = np.searchsorted(keys, (users64 << _USER_SHIFT) | np.asarray(timestamps, dtype=np.int64), "left")
        return start, end


def recent_events(start: np.ndarray, end: np.ndarray, count: int) -> np.ndarray:
    """``[N, count]`` event indices, most recent first, ``NO_EVENT`` where the history is shorter."""
    offsets = np.arange(1, count + 1)
    index = end[:, None] - offsets[None, :]
    return np.where(index >= start[:, None], index, NO_EVENT)


def retrieve_events(
    log: EventLog,
    start: np.ndarray,
    end: np.ndarray,
    targets: np.ndarray,
    vectors: np.ndarray,
    count: int,
    pool: int | None = None,
) -> np.ndarray:
    """The Long-Short Modality Retriever: ``[N, count]`` event indices most similar to the target first.

    Args:
        log: the event log.
        start: ``[N]`` first earlier event of each sample (``EventLog.earlier``).
        end: ``[N]`` one past the last earlier event.
        targets: ``[N]`` target item_idx.
        vectors: ``[N_items, D]`` L2-normalised item content vectors (zero rows = no content).
        count: K, items kept.
        pool: search only the most recent ``pool`` earlier events; None = all of them.

    Returns:
        Event indices sorted by descending cosine (ties: more recent first), ``NO_EVENT`` padding.
    """
    n = start.shape[0]
    out = np.full((n, count), NO_EVENT, dtype=np.int64)
    if count == 0 or n == 0:
        return out
    lengths = end - start if pool is None else np.minimum(end - start, pool)
    for lo in range(0, n, _CHUNK_ROWS):
        hi = min(lo + _CHUNK_ROWS, n)
        width = int(lengths[lo:hi].max(initial=0))
        if width == 0:
            continue
        candidates = recent_events(start[lo:hi], end[lo:hi], width)  # [c, P] most recent first
        valid = (candidates != NO_EVENT) & (np.arange(width)[None, :] < lengths[lo:hi, None])
        items = log.items[np.where(valid, candidates, 0)]
        scores = vectors[targets[lo:hi]] @ vectors.T  # [c, N_items]
        sims = np.take_along_axis(scores, items, axis=1)
        sims = np.where(valid, sims, -np.inf)
        # Stable sort on -sim keeps the recency order (column order) among equal similarities.
        order = np.argsort(-sims, axis=1, kind="stable")[:, :count]
        picked = np.take_along_axis(candidates, order, axis=1)
        picked_valid = np.take_along_axis(valid, order, axis=1)
        out[lo:hi, : picked.shape[1]] = np.where(picked_valid, picked, NO_EVENT)
    return out


def few2many_indices(num_train: int, fraction: float, seed: int) -> np.ndarray:
    """Few2Many: the sorted training rows the LM trains on, ``round(fraction * num_train)`` of them (>= 1)."""
    size = min(num_train, max(1, round(fraction * num_train)))
    rng = np.random.default_rng((seed, _FEW2MANY_STREAM))
    return np.sort(rng.choice(num_train, size=size, replace=False))


def eval_indices(num_rows: int, max_samples: int | None, seed: int) -> np.ndarray:
    """Rows of a valid / test split every model of the ablation is scored on (all when ``max_samples``
    is None or larger than the split)."""
    if max_samples is None or max_samples >= num_rows:
        return np.arange(num_rows)
    rng = np.random.default_rng((seed, _EVAL_STREAM))
    return np.sort(rng.choice(num_rows, size=max_samples, replace=False))
