"""Offline evaluation that knows nothing about models: batched full-ranking top-K and tidy metric tables.

Shapes: U evaluated users, B users per batch, N item indices (the whole vocabulary, reserved indices
included), K list length. A model enters only as ``score_fn(user_batch [B]) -> scores [B, N]``.

Metric tables are tidy pandas frames with columns ``metric, k, bucket, value``: one row per metric, cut-off
(0 for metrics without one) and user bucket (``"all"`` for everyone). ``recsys.tracking.keys.metric_key``
turns a row into its MLflow key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd
import scipy.sparse as sp

from recsys.metrics.beyond_accuracy import (
    average_recommendation_popularity_per_user,
    catalog_coverage,
    gini_index,
    intra_list_diversity_prefixes,
    novelty_per_user,
)
from recsys.metrics.classification import auc, gauc, log_loss
from recsys.metrics.ranking import PAD_ITEM, RANKING_METRICS, check_topk, per_user_ranking_metrics
from recsys.tracking.keys import ALL_USERS, NO_CUTOFF

COLD_BUCKET = "0"
"""Bucket of users with no training interaction (only present when such users are evaluated)."""

METRIC_COLUMNS = ("metric", "k", "bucket", "value")
"""Columns of every metric table, in order."""


def _mask_scores(
    scores: npt.NDArray[np.float32], batch_users: npt.NDArray[np.int64], seen: sp.csr_matrix
) -> None:
    rows = seen[batch_users]
    row_of_entry = np.repeat(np.arange(batch_users.size), np.diff(rows.indptr))
    scores[row_of_entry, rows.indices] = -np.inf


def _select_topk(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Column indices of the k best scores of each row, lower index first among equal scores (unsorted)."""
    candidates = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    threshold = np.take_along_axis(scores, candidates, axis=1).min(axis=1, keepdims=True)
    # argpartition picks arbitrary members of a tie at the k-th score; redo those rows deterministically.
    tied = (scores >= threshold).sum(axis=1) > k
    if tied.any():
        part, cut = scores[tied], threshold[tied]
        at_cut = part == cut
        need = k - (part > cut).sum(axis=1, keepdims=True)
        chosen = (part > cut) | (at_cut & (np.cumsum(at_cut, axis=1) <= need))
        candidates[tied] = np.nonzero(chosen)[1].reshape(-1, k)
    return candidates.astype(np.int64)


def full_ranking_topk(
    score_fn: Callable[[np.ndarray], np.ndarray],
    users: np.ndarray,
    seen: sp.csr_matrix,
    k: int,
    batch_size: int = 1024,
    excluded_items: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-K items per user over the whole catalog, batch by batch.

    Each batch of user indices is scored by ``score_fn``; the user's seen items (``seen[user]``) and
    ``excluded_items`` (for example the padding and OOV indices 0 and 1) are set to ``-inf``; the K best
    remaining items are found with ``np.argpartition`` and then sorted by descending score. Equal scores are
    ordered by ascending item index, including at the K-th place, so the result is deterministic. Memory is
    O(batch_size * N): the ``[U, N]`` score matrix is never built.

    Args:
        score_fn: maps ``[B]`` int64 user indices to ``[B, N]`` scores (cast to float32) over every item index
            ``0..N-1``; must not return NaN. The returned array is copied, never modified.
        users: ``[U]`` user indices to rank for; row u of the outputs belongs to ``users[u]``.
        seen: ``[num_users, N]`` CSR of items to exclude per user (training history), indexed by user index.
        k: list length K, >= 1. May exceed N.
        batch_size: users scored per ``score_fn`` call, >= 1.
        excluded_items: item indices excluded for every user, or ``None``.

    Returns:
        ``(items [U, K] int64, scores [U, K] float32)``, best first. When fewer than K items remain unmasked
        the tail is padded with item ``-1`` and score ``-inf``.

    Raises:
        ValueError: if k or batch_size < 1, ``score_fn`` returns a wrong shape or NaN, or ``seen`` has a
            different number of columns than the scores.
    """
    if k < 1 or batch_size < 1:
        raise ValueError(f"k and batch_size must be >= 1, got k={k}, batch_size={batch_size}")
    user_ids = np.asarray(users, dtype=np.int64).reshape(-1)
    seen_csr = sp.csr_matrix(seen)
    excluded = None if excluded_items is None else np.asarray(excluded_items, dtype=np.int64).reshape(-1)
    top_items = np.full((user_ids.size, k), PAD_ITEM, dtype=np.int64)
    top_scores = np.full((user_ids.size, k), -np.inf, dtype=np.float32)
    for start in range(0, user_ids.size, batch_size):
        batch = user_ids[start : start + batch_size]
        scores = np.array(score_fn(batch), dtype=np.float32)
        if scores.ndim != 2 or scores.shape[0] != batch.size:
            raise ValueError(f"score_fn returned shape {scores.shape} for {batch.size} users, not [B, N]")
        if seen_csr.shape[1] != scores.shape[1]:
            raise ValueError(f"seen has {seen_csr.shape[1]} columns, score_fn returned {scores.shape[1]}")
        if np.isnan(scores).any():
            bad_user = int(batch[np.flatnonzero(np.isnan(scores).any(axis=1))[0]])
            raise ValueError(f"score_fn returned NaN scores for user index {bad_user}")
        _mask_scores(scores, batch, seen_csr)
        if excluded is not None:
            scores[:, excluded] = -np.inf
        width = min(k, scores.shape[1])
        if width == 0:
            continue
        chosen = _select_topk(scores, width)
        chosen_scores = np.take_along_axis(scores, chosen, axis=1)
        order = np.lexsort((chosen, -chosen_scores), axis=1)
        chosen = np.take_along_axis(chosen, order, axis=1)
        chosen_scores = np.take_along_axis(chosen_scores, order, axis=1)
        chosen[np.isneginf(chosen_scores)] = PAD_ITEM
        top_items[start : start + batch.size, :width] = chosen
        top_scores[start : start + batch.size, :width] = chosen_scores
    return top_items, top_scores


def _bucket_name(low: int, high: int | None) -> str:
    if high is None:
        return f"{low}+"
    return str(low) if low == high else f"{low}-{high}"


def activity_buckets(train_counts: np.ndarray, edges: list[int]) -> np.ndarray:
    """Names each user's activity bucket from inclusive upper edges.

    With ``edges = [e_1 < ... < e_m]`` the buckets are ``1..e_1``, ``e_1+1..e_2``, ..., and ``e_m+1`` upwards,
    named ``"1-5"``, ``"6-20"``, ``"21+"`` for ``edges = [5, 20]`` (a one-value bucket is named by its value,
    ``"1"``). Users with 0 training interactions get their own bucket ``"0"`` so cold users never mix with
    light ones.

    Args:
        train_counts: ``[U]`` non-negative training interactions per user.
        edges: strictly increasing positive upper edges.

    Returns:
        ``[U]`` numpy str array of bucket names.

    Raises:
        ValueError: if edges is empty, not strictly increasing or not positive, or a count is negative.
    """
    bounds = np.asarray(edges, dtype=np.int64)
    if bounds.size == 0 or bounds[0] < 1 or (np.diff(bounds) <= 0).any():
        raise ValueError(f"edges must be non-empty, positive and strictly increasing, got {edges}")
    counts = np.asarray(train_counts, dtype=np.int64).reshape(-1)
    if (counts < 0).any():
        raise ValueError(f"train_counts must be >= 0, found {counts.min()}")
    lows = [1, *(int(edge) + 1 for edge in bounds)]
    highs: list[int | None] = [*(int(edge) for edge in bounds), None]
    names = np.array([_bucket_name(low, high) for low, high in zip(lows, highs, strict=True)])
    labels = names[np.searchsorted(bounds, counts, side="left")]
    labels[counts == 0] = COLD_BUCKET
    return labels


def _bucket_order(label: str) -> tuple[int, str]:
    """Sorts ``"1-5"`` before ``"6-20"`` before ``"21+"`` (leading number), other names after, by name."""
    digits = re.match(r"\d+", label)
    return (int(digits.group()) if digits else np.iinfo(np.int64).max, label)


def _mean_defined(values: npt.NDArray[np.float64]) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


def evaluate_ranking(
    topk: np.ndarray,
    truth: sp.csr_matrix,
    ks: Sequence[int],
    *,
    item_popularity: np.ndarray,
    num_items: int,
    buckets: np.ndarray | None = None,
    item_embeddings: np.ndarray | None = None,
) -> pd.DataFrame:
    """Accuracy and beyond-accuracy metrics of top-K lists, overall and per user bucket.

    For each k in ``ks`` (lists cut to their first k items):

    - ``recall``, ``precision``, ``hit_rate``, ``ndcg``, ``mrr``, ``map``: mean of the per-user values of
      ``recsys.metrics.ranking`` over the users with at least one relevant item (others are excluded);
    - ``coverage`` and ``gini``: over the set of lists (``catalog_coverage``, ``gini_index``);
    - ``novelty``, ``arp`` and, when ``item_embeddings`` is given, ``intra_list_diversity``: mean of the
      per-user values of ``recsys.metrics.beyond_accuracy`` over users whose list is non-empty (ILD: at least
      two items).

    Beyond-accuracy metrics use every row of ``topk``, relevant items or not. Every metric is computed for
    bucket ``"all"`` and again for each distinct bucket name on that bucket's rows. A mean over no user is
    ``nan``.

    Args:
        topk: ``[U, K]`` int item indices, best first, ``-1`` padding.
        truth: ``[U, N]`` sparse relevance aligned with ``topk``.
        ks: cut-offs, each ``1 <= k <= K``.
        item_popularity: ``[N]`` training popularity (novelty, arp).
        num_items: catalog size for coverage and Gini (the recommendable items).
        buckets: ``[U]`` bucket name per row (``activity_buckets``), or ``None`` for ``"all"`` only.
        item_embeddings: ``[N, D]`` item vectors for intra-list diversity, or ``None`` to skip it.

    Returns:
        Tidy frame with columns ``metric`` (str), ``k`` (int), ``bucket`` (str), ``value`` (float).

    Raises:
        ValueError: if a k is out of range, ``buckets`` has the wrong length or uses the name ``"all"``.
    """
    items = check_topk(topk)
    cutoffs = [int(k) for k in ks]
    per_user = per_user_ranking_metrics(items, truth, cutoffs)
    groups: list[tuple[str, npt.NDArray[np.bool_]]] = [(ALL_USERS, np.ones(items.shape[0], dtype=np.bool_))]
    if buckets is not None:
        names = np.asarray(buckets).astype(str)
        if names.shape != (items.shape[0],):
            raise ValueError(f"buckets must have shape ({items.shape[0]},), got {names.shape}")
        if (names == ALL_USERS).any():
            raise ValueError(f"bucket name {ALL_USERS!r} is reserved for the overall rows")
        groups += [(name, names == name) for name in sorted(set(names.tolist()), key=_bucket_order)]
    ild = None if item_embeddings is None else intra_list_diversity_prefixes(items, item_embeddings)
    rows: list[tuple[str, int, str, float]] = []
    for k in cutoffs:
        head = items[:, :k]
        user_values = {name: per_user[(name, k)] for name in RANKING_METRICS}
        user_values["novelty"] = novelty_per_user(head, item_popularity)
        user_values["arp"] = average_recommendation_popularity_per_user(head, item_popularity)
        if ild is not None:
            user_values["intra_list_diversity"] = ild[:, k - 1]
        for bucket, mask in groups:
            rows += [(name, k, bucket, _mean_defined(values[mask])) for name, values in user_values.items()]
            rows.append(("coverage", k, bucket, catalog_coverage(head[mask], num_items)))
            rows.append(("gini", k, bucket, gini_index(head[mask], num_items)))
    return _metric_frame(rows)


def _metric_frame(rows: list[tuple[str, int, str, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    return frame.astype({"metric": str, "k": np.int64, "bucket": str, "value": np.float64})


def evaluate_ctr(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> pd.DataFrame:
    """CTR metrics in the tidy shape of ``evaluate_ranking`` (``k = 0``, bucket ``"all"``).

    Rows: ``auc`` (``classification.auc``), ``gauc`` (``classification.gauc`` grouped by ``groups``, usually
    users), ``logloss`` (``classification.log_loss`` with its default clipping).

    Args:
        labels: ``[M]`` binary click labels.
        scores: ``[M]`` predicted click probabilities in ``[0, 1]``.
        groups: ``[M]`` group key per sample.

    Returns:
        Tidy frame with columns ``metric, k, bucket, value``.
    """
    rows = [
        ("auc", NO_CUTOFF, ALL_USERS, auc(labels, scores)),
        ("gauc", NO_CUTOFF, ALL_USERS, gauc(labels, scores, groups)),
        ("logloss", NO_CUTOFF, ALL_USERS, log_loss(labels, scores)),
    ]
    return _metric_frame(rows)
