"""Ranking metrics on top-K recommendation lists: one value per user, pure numpy, no loop over users.

Shapes: U users, K list length, N catalog size (item indices ``0..N-1``).

Conventions shared by every metric here:

- ``topk [U, K] int64`` holds item indices sorted best-first. Lists shorter than K are padded with
  ``PAD_ITEM`` (-1) at the end; padding never counts as a hit, and an item must not repeat within a row.
- ``truth [U, N]`` is a CSR matrix aligned row by row with ``topk``; a stored nonzero marks a relevant item
  (relevance is binary: the value itself is ignored).
- Ranks are 1-based: the first column of ``topk`` is rank 1. ``hit_r`` is 1 when the item at rank r is
  relevant, and ``R = |rel_u|`` is the number of relevant items of user u.
- Users with no relevant item (R = 0) get ``nan`` for every metric: the metrics are undefined for them and
  the caller excludes them (``recsys.evaluation.evaluate_ranking`` averages over users with R >= 1).
- A cut-off k must satisfy ``1 <= k <= K``. Lists shorter than k are not penalised differently from lists
  whose tail misses: padding slots are simply non-hits (precision still divides by k).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

PAD_ITEM = -1
"""Item index that pads a top-K list shorter than K."""

RANKING_METRICS = ("recall", "precision", "hit_rate", "ndcg", "mrr", "map")
"""Names of the per-user ranking metrics, in the order ``per_user_ranking_metrics`` returns them."""

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


def check_topk(topk: npt.ArrayLike) -> IntArray:
    """Validates a top-K matrix and returns it as int64.

    Args:
        topk: ``[U, K]`` integer item indices, best first, ``-1`` padding.

    Returns:
        The same values as a ``[U, K]`` int64 array.

    Raises:
        ValueError: if the array is not 2-D integer, holds an index below -1, or repeats an item in a row.
    """
    arr = np.asarray(topk)
    if arr.ndim != 2:
        raise ValueError(f"topk must be a 2-D [U, K] array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"topk must hold integer item indices, got dtype {arr.dtype}")
    out = arr.astype(np.int64, copy=False)
    if out.size == 0:
        return out
    if out.min() < PAD_ITEM:
        raise ValueError(f"topk holds index {out.min()}; valid values are item indices >= 0 or {PAD_ITEM}")
    ordered = np.sort(out, axis=1)
    repeated = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != PAD_ITEM)
    if repeated.any():
        row = int(np.flatnonzero(repeated.any(axis=1))[0])
        raise ValueError(f"topk row {row} repeats an item: {out[row].tolist()}")
    return out


def _relevance(truth: sp.spmatrix | sp.sparray, num_users: int) -> sp.csr_matrix:
    """Returns ``truth`` as CSR with sorted indices, no duplicates and no stored zeros."""
    if not sp.issparse(truth):
        raise ValueError(f"truth must be a scipy.sparse matrix [U, N], got {type(truth).__name__}")
    rel = sp.csr_matrix(truth)
    if rel.shape[0] != num_users:
        raise ValueError(f"truth has {rel.shape[0]} rows but topk has {num_users}; rows must be aligned")
    if not rel.has_canonical_format or (rel.data == 0).any():
        rel = rel.copy()
        rel.sum_duplicates()
        rel.eliminate_zeros()
    return rel


def _num_relevant(rel: sp.csr_matrix) -> IntArray:
    counts: IntArray = np.diff(rel.indptr).astype(np.int64)
    return counts


def _hits(topk: IntArray, rel: sp.csr_matrix) -> BoolArray:
    num_users, num_items = rel.shape
    if topk.size and topk.max() >= num_items:
        raise ValueError(f"topk holds item {topk.max()} but truth has only {num_items} columns")
    # Each relevant (user, item) pair becomes one int64 key user * N + item; CSR order makes the keys sorted,
    # so every top-K slot is looked up with one binary search.
    rows = np.repeat(np.arange(num_users, dtype=np.int64), np.diff(rel.indptr))
    keys = rows * num_items + rel.indices.astype(np.int64)
    if keys.size == 0:
        return np.zeros(topk.shape, dtype=np.bool_)
    query = np.arange(num_users, dtype=np.int64)[:, None] * num_items + topk
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    found: BoolArray = (keys[pos] == query) & (topk != PAD_ITEM)
    return found


def hits(topk: npt.ArrayLike, truth: sp.spmatrix | sp.sparray) -> BoolArray:
    """Marks which recommended items are relevant.

    Args:
        topk: ``[U, K]`` int item indices, best first, ``-1`` padding.
        truth: ``[U, N]`` sparse relevance, row u aligned with ``topk[u]``; nonzero = relevant.

    Returns:
        ``[U, K]`` bool, ``True`` where ``topk[u, r]`` is a relevant item of user u (never for padding).

    Raises:
        ValueError: if the shapes disagree or ``topk`` holds an index >= N.
    """
    items = check_topk(topk)
    return _hits(items, _relevance(truth, items.shape[0]))


def _discounts(k: int) -> FloatArray:
    """``1 / log2(r + 1)`` for ranks r = 1..k."""
    discounts: FloatArray = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    return discounts


def _undefined_to_nan(values: FloatArray, num_relevant: IntArray) -> FloatArray:
    values[num_relevant == 0] = np.nan
    return values


def _recall(hit_k: BoolArray, num_relevant: IntArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        values: FloatArray = hit_k.sum(axis=1) / num_relevant
    return _undefined_to_nan(values, num_relevant)


def _precision(hit_k: BoolArray, num_relevant: IntArray) -> FloatArray:
    values: FloatArray = hit_k.sum(axis=1) / np.float64(hit_k.shape[1])
    return _undefined_to_nan(values, num_relevant)


def _hit_rate(hit_k: BoolArray, num_relevant: IntArray) -> FloatArray:
    values: FloatArray = np.asarray(hit_k.any(axis=1), dtype=np.float64)
    return _undefined_to_nan(values, num_relevant)


def _ndcg(hit_k: BoolArray, num_relevant: IntArray) -> FloatArray:
    k = hit_k.shape[1]
    discounts = _discounts(k)
    dcg: FloatArray = np.asarray(hit_k @ discounts, dtype=np.float64)
    ideal_table = np.concatenate(([0.0], np.cumsum(discounts)))
    idcg = ideal_table[np.minimum(num_relevant, k)]
    with np.errstate(divide="ignore", invalid="ignore"):
        values: FloatArray = dcg / idcg
    return _undefined_to_nan(values, num_relevant)


def _mrr(hit_k: BoolArray, num_relevant: IntArray) -> FloatArray:
    first = np.argmax(hit_k, axis=1)
    values: FloatArray = np.where(hit_k.any(axis=1), 1.0 / (first + 1.0), 0.0)
    return _undefined_to_nan(values, num_relevant)


def _map(hit_k: BoolArray, num_relevant: IntArray) -> FloatArray:
    k = hit_k.shape[1]
    precision_at_r = np.cumsum(hit_k, axis=1) / np.arange(1, k + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        values: FloatArray = (precision_at_r * hit_k).sum(axis=1) / np.minimum(num_relevant, k)
    return _undefined_to_nan(values, num_relevant)


_KERNELS = {
    "recall": _recall,
    "precision": _precision,
    "hit_rate": _hit_rate,
    "ndcg": _ndcg,
    "mrr": _mrr,
    "map": _map,
}


def _check_k(k: int, list_length: int) -> None:
    if not 1 <= k <= list_length:
        raise ValueError(f"cut-off k={k} must be between 1 and the list length K={list_length}")


def _metric(name: str, topk: npt.ArrayLike, truth: sp.spmatrix | sp.sparray, k: int) -> FloatArray:
    items = check_topk(topk)
    _check_k(k, items.shape[1])
    rel = _relevance(truth, items.shape[0])
    return _KERNELS[name](_hits(items[:, :k], rel), _num_relevant(rel))


def recall_at_k(topk: npt.ArrayLike, truth: sp.spmatrix | sp.sparray, k: int) -> FloatArray:
    """Share of a user's relevant items found in the first k recommendations.

    ``recall@k = sum_{r<=k} hit_r / R``. Equals trec_eval's ``recall_k``.

    Args:
        topk: ``[U, K]`` int item indices, best first, ``-1`` padding.
        truth: ``[U, N]`` sparse relevance aligned with ``topk``.
        k: cut-off, ``1 <= k <= K``.

    Returns:
        ``[U]`` float64 in ``[0, 1]``; ``nan`` for users with R = 0.
    """
    return _metric("recall", topk, truth, k)


def precision_at_k(topk: npt.ArrayLike, truth: sp.spmatrix | sp.sparray, k: int) -> FloatArray:
    """Share of the first k recommendations that are relevant.

    ``precision@k = sum_{r<=k} hit_r / k``; the denominator is k even when the list holds fewer than k items
    (padding counts as a miss). Equals trec_eval's ``P_k``.

    Args:
        topk: ``[U, K]`` int item indices, best first, ``-1`` padding.
        truth: ``[U, N]`` sparse relevance aligned with ``topk``.
        k: cut-off, ``1 <= k <= K``.

    Returns:
        ``[U]`` float64 in ``[0, 1]``; ``nan`` for users with R = 0.
    """
    return _metric("precision", topk, truth, k)


def hit_rate_at_k(topk: npt.ArrayLike, truth: sp.spmatrix | sp.sparray, k: int) -> FloatArray:
    """Whether at least one relevant item is among the first k recommendations.

    ``hit_rate@k = 1[sum_{r<=k} hit_r > 0]``.

    Args:
        topk: ``[U, K]`` int item indices, best first, ``-1`` padding.
        truth: ``[U, N]`` sparse relevance aligned with ``topk``.
        k: cut-off, ``1 <= k <= K``.

    Returns:
        ``[U]`` float64, 0.0 or 1.0; ``nan`` for users with R = 0.
    """
    return _metric("hit_rate", topk, truth, k)


def ndcg_at_k(topk: npt.ArrayLike, truth: sp.spmatrix | sp.sparray, k: int) -> FloatArray:
    """Normalised discounted cumulative gain with binary gains.

    ``DCG@k = sum_{r<=k} hit_r / log2(r + 1)``,
    ``IDCG@k = sum_{r=1}^{min(R, k)} 1 / log2(r + 1)`` (all relevant items ranked first, truncated at k),
    ``nDCG@k = DCG@k / IDCG@k``. This is the standard (Järvelin & Kekäläinen, binary gain) definition and
    equals trec_eval's ``ndcg_cut_k``, whose ideal ranking is also cut at k.

    Args:
        topk: ``[U, K]`` int item indices, best first, ``-1`` padding.
        truth: ``[U, N]`` sparse relevance aligned with ``topk``.
        k: cut-off, ``1 <= k <= K``.

    Returns:
        ``[U]`` float64 in ``[0, 1]``; ``nan`` for users with R = 0.
    """
    return _metric("ndcg", topk, truth, k)


def mrr_at_k(topk: npt.ArrayLike, truth: sp.spmatrix | sp.sparray, k: int) -> FloatArray:
    """Reciprocal rank of the first relevant item within the first k recommendations.

    ``RR@k = 1 / min{r <= k : hit_r = 1}``, and 0 when no relevant item is in the first k. Equals
    trec_eval's ``recip_rank`` on a run truncated to its first k items.

    Args:
        topk: ``[U, K]`` int item indices, best first, ``-1`` padding.
        truth: ``[U, N]`` sparse relevance aligned with ``topk``.
        k: cut-off, ``1 <= k <= K``.

    Returns:
        ``[U]`` float64 in ``[0, 1]``; ``nan`` for users with R = 0.
    """
    return _metric("mrr", topk, truth, k)


def map_at_k(topk: npt.ArrayLike, truth: sp.spmatrix | sp.sparray, k: int) -> FloatArray:
    """Average precision truncated at k (averaged over users by the caller, hence MAP).

    ``AP@k = (1 / min(R, k)) * sum_{r<=k} hit_r * precision@r``, with ``precision@r = sum_{j<=r} hit_j / r``.
    The normaliser ``min(R, k)`` makes a perfect list score 1.0 even when R > k (the convention of
    recommenders' ``map_at_k`` and RecBole's ``MAP``). trec_eval's ``map_cut_k`` divides by R instead, so the
    two agree exactly when R <= k and trec_eval's value is ``min(R, k) / R`` times ours otherwise.

    Args:
        topk: ``[U, K]`` int item indices, best first, ``-1`` padding.
        truth: ``[U, N]`` sparse relevance aligned with ``topk``.
        k: cut-off, ``1 <= k <= K``.

    Returns:
        ``[U]`` float64 in ``[0, 1]``; ``nan`` for users with R = 0.
    """
    return _metric("map", topk, truth, k)


def per_user_ranking_metrics(
    topk: npt.ArrayLike, truth: sp.spmatrix | sp.sparray, ks: Sequence[int]
) -> dict[tuple[str, int], FloatArray]:
    """Every ranking metric at every cut-off, looking the hits up once.

    Same values as calling ``recall_at_k``, ``precision_at_k``, ``hit_rate_at_k``, ``ndcg_at_k``, ``mrr_at_k``
    and ``map_at_k`` one by one (see their formulas), for evaluators that need all of them.

    Args:
        topk: ``[U, K]`` int item indices, best first, ``-1`` padding.
        truth: ``[U, N]`` sparse relevance aligned with ``topk``.
        ks: cut-offs, each ``1 <= k <= K``.

    Returns:
        ``{(metric, k): [U] float64}`` for metric in ``RANKING_METRICS``; ``nan`` for users with R = 0.
    """
    items = check_topk(topk)
    for k in ks:
        _check_k(k, items.shape[1])
    rel = _relevance(truth, items.shape[0])
    hit = _hits(items, rel)
    num_relevant = _num_relevant(rel)
    return {(name, k): kernel(hit[:, :k], num_relevant) for k in ks for name, kernel in _KERNELS.items()}
