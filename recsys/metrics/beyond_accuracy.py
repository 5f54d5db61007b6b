"""Beyond-accuracy metrics of top-K lists: coverage, concentration, novelty, diversity, popularity bias.

Shapes: U users, K list length, N catalog size, D embedding width. ``topk [U, K]`` holds item indices
best-first with ``-1`` padding (see ``recsys.metrics.ranking``); padding is ignored everywhere here. Per-user
variants exist for the metrics that are a mean over users, so that activity buckets can average a subset;
coverage and Gini are properties of a whole set of lists, so a bucket passes its own rows instead.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from recsys.metrics.ranking import PAD_ITEM, check_topk

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

ZERO_POPULARITY_FRACTION = 0.5
"""An item with zero popularity gets this fraction of the smallest positive popularity (see ``novelty``)."""

_ILD_CHUNK_ELEMENTS = 1 << 22
"""Float64 elements of the gathered ``[chunk, K, max(K, D)]`` block in ``intra_list_diversity``."""


def _recommended(topk: npt.ArrayLike) -> IntArray:
    items = check_topk(topk)
    valid: IntArray = items[items != PAD_ITEM]
    return valid


def _recommended_counts(topk: npt.ArrayLike, num_items: int) -> IntArray:
    """Recommendation count of every distinct recommended item (order irrelevant), checked against N."""
    if num_items < 1:
        raise ValueError(f"num_items must be >= 1, got {num_items}")
    _, counts = np.unique(_recommended(topk), return_counts=True)
    if counts.size > num_items:
        raise ValueError(f"{counts.size} distinct items recommended but the catalog has only {num_items}")
    return counts.astype(np.int64)


def catalog_coverage(topk: npt.ArrayLike, num_items: int) -> float:
    """Share of the catalog recommended to at least one user.

    ``coverage = |union_u {topk[u, r] != -1}| / num_items``.

    Args:
        topk: ``[U, K]`` int item indices, ``-1`` padding.
        num_items: catalog size N (the items that could be recommended), >= 1.

    Returns:
        Coverage in ``[0, 1]``; 0.0 when no list holds an item.

    Raises:
        ValueError: if num_items < 1 or more distinct items are recommended than the catalog holds.
    """
    return _recommended_counts(topk, num_items).size / num_items


def gini_index(topk: npt.ArrayLike, num_items: int) -> float:
    """Gini index of how often each catalog item is recommended.

    With ``x_1 <= ... <= x_n`` the recommendation counts of all ``n = num_items`` catalog items (items never
    recommended count 0), ``G = sum_i (2i - n - 1) x_i / (n * sum_i x_i)``. G = 0 when every item is
    recommended equally often and ``(n - 1) / n`` (-> 1) when a single item gets every recommendation.

    Args:
        topk: ``[U, K]`` int item indices, ``-1`` padding.
        num_items: catalog size N, >= 1.

    Returns:
        G in ``[0, 1)``; ``nan`` when no list holds an item (no distribution to measure).

    Raises:
        ValueError: if num_items < 1 or more distinct items are recommended than the catalog holds.
    """
    counts = np.sort(_recommended_counts(topk, num_items)).astype(np.float64)
    total = counts.sum()
    if total == 0:
        return float("nan")
    # The num_items - len(counts) never-recommended items sort first with x = 0 and add nothing.
    position = np.arange(num_items - counts.size + 1, num_items + 1, dtype=np.float64)
    return float(((2.0 * position - num_items - 1.0) * counts).sum() / (num_items * total))


def _popularity(item_popularity: npt.ArrayLike, items: IntArray) -> FloatArray:
    popularity = np.asarray(item_popularity, dtype=np.float64)
    if popularity.ndim != 1:
        raise ValueError(f"item_popularity must be 1-D [N], got shape {popularity.shape}")
    if (popularity < 0).any() or np.isnan(popularity).any():
        raise ValueError("item_popularity must hold non-negative numbers")
    if items.size and items.max() >= popularity.size:
        raise ValueError(f"topk holds item {items.max()} but item_popularity has {popularity.size} entries")
    return popularity


def _per_user_mean(topk: IntArray, item_values: FloatArray) -> FloatArray:
    """Mean of ``item_values`` over each user's non-padding items; ``nan`` for an all-padding row."""
    valid = topk != PAD_ITEM
    gathered = np.where(valid, item_values[np.where(valid, topk, 0)], 0.0)
    count = valid.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        means: FloatArray = gathered.sum(axis=1) / count
    means[count == 0] = np.nan
    return means


def _mean_over_users(per_user: FloatArray) -> float:
    defined = per_user[~np.isnan(per_user)]
    return float(defined.mean()) if defined.size else float("nan")


def self_information(item_popularity: npt.ArrayLike) -> FloatArray:
    """Per-item self-information ``-log2(p_i)`` in bits, the unit novelty averages.

    ``p_i = pop_i / sum_j pop_j``. An item with ``pop_i = 0`` (never seen in training) would have infinite
    self-information, so it gets ``ZERO_POPULARITY_FRACTION`` (1/2) times the smallest positive ``p``: rarer
    than any observed item, finite, and independent of the popularity's unit (counts of users or events).

    Args:
        item_popularity: ``[N]`` non-negative training popularity (users or interactions per item).

    Returns:
        ``[N]`` float64 self-information, >= 0.

    Raises:
        ValueError: if the popularity is not 1-D, negative, NaN or all zero.
    """
    popularity = _popularity(item_popularity, np.empty(0, dtype=np.int64))
    total = popularity.sum()
    if total <= 0:
        raise ValueError("item_popularity sums to 0: no probability can be derived")
    probability = popularity / total
    floor = ZERO_POPULARITY_FRACTION * probability[probability > 0].min()
    bits: FloatArray = -np.log2(np.maximum(probability, floor))
    return bits


def novelty_per_user(topk: npt.ArrayLike, item_popularity: npt.ArrayLike) -> FloatArray:
    """Mean self-information of each user's recommended items.

    ``novelty_u = (1 / |L_u|) sum_{i in L_u} -log2(p_i)`` with ``L_u`` the user's non-padding items and
    ``p_i`` as in ``self_information`` (zero-popularity floor included).

    Args:
        topk: ``[U, K]`` int item indices, ``-1`` padding.
        item_popularity: ``[N]`` non-negative training popularity.

    Returns:
        ``[U]`` float64 bits; ``nan`` for a user whose list is all padding.
    """
    items = check_topk(topk)
    _popularity(item_popularity, items)
    return _per_user_mean(items, self_information(item_popularity))


def novelty(topk: npt.ArrayLike, item_popularity: npt.ArrayLike) -> float:
    """Mean self-information of recommended items: ``mean_u novelty_u`` over users with a non-empty list.

    With lists of equal length (no padding) this is the mean of ``-log2(p_i)`` over every recommended item.
    See ``novelty_per_user`` and ``self_information`` for the formula and the zero-popularity floor.

    Args:
        topk: ``[U, K]`` int item indices, ``-1`` padding.
        item_popularity: ``[N]`` non-negative training popularity.

    Returns:
        Novelty in bits; ``nan`` when every list is empty.
    """
    return _mean_over_users(novelty_per_user(topk, item_popularity))


def average_recommendation_popularity_per_user(
    topk: npt.ArrayLike, item_popularity: npt.ArrayLike
) -> FloatArray:
    """Mean training popularity of each user's recommended items.

    ``ARP_u = (1 / |L_u|) sum_{i in L_u} pop_i`` in the popularity's own unit (no normalisation).

    Args:
        topk: ``[U, K]`` int item indices, ``-1`` padding.
        item_popularity: ``[N]`` non-negative training popularity.

    Returns:
        ``[U]`` float64; ``nan`` for a user whose list is all padding.
    """
    items = check_topk(topk)
    return _per_user_mean(items, _popularity(item_popularity, items))


def average_recommendation_popularity(topk: npt.ArrayLike, item_popularity: npt.ArrayLike) -> float:
    """Popularity bias (ARP, Abdollahpouri et al.): ``mean_u ARP_u`` over users with a non-empty list.

    Args:
        topk: ``[U, K]`` int item indices, ``-1`` padding.
        item_popularity: ``[N]`` non-negative training popularity.

    Returns:
        ARP in the popularity's unit; ``nan`` when every list is empty.
    """
    return _mean_over_users(average_recommendation_popularity_per_user(topk, item_popularity))


def intra_list_diversity_prefixes(topk: npt.ArrayLike, item_embeddings: npt.ArrayLike) -> FloatArray:
    """Intra-list diversity of every prefix of every list, so all cut-offs cost one pass.

    For the first k slots of user u, with ``V`` its non-padding items (padding is skipped, not counted):
    ``ILD_u@k = (2 / (|V| (|V| - 1))) sum_{i < j in V} (1 - cos(e_i, e_j))``. An item whose embedding is the
    zero vector has cosine 0 with every item (distance 1).

    Args:
        topk: ``[U, K]`` int item indices, ``-1`` padding.
        item_embeddings: ``[N, D]`` real item vectors.

    Returns:
        ``[U, K]`` float64; column ``k - 1`` is ``ILD@k``, in ``[0, 2]``; ``nan`` where fewer than two items.

    Raises:
        ValueError: if the embeddings are not 2-D or do not cover an index in ``topk``.
    """
    items = check_topk(topk)
    embeddings = np.asarray(item_embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"item_embeddings must be 2-D [N, D], got shape {embeddings.shape}")
    if items.size and items.max() >= embeddings.shape[0]:
        raise ValueError(f"topk holds item {items.max()} but item_embeddings has {embeddings.shape[0]} rows")
    num_users, list_length = items.shape
    out = np.full((num_users, list_length), np.nan, dtype=np.float64)
    if items.size == 0:
        return out
    chunk = max(1, _ILD_CHUNK_ELEMENTS // (list_length * max(list_length, embeddings.shape[1], 1)))
    strictly_upper = np.triu(np.ones((list_length, list_length), dtype=np.bool_), k=1)
    for start in range(0, num_users, chunk):
        block = items[start : start + chunk]
        valid = block != PAD_ITEM
        vectors = embeddings[np.where(valid, block, 0)].astype(np.float64)
        norms = np.linalg.norm(vectors, axis=2, keepdims=True)
        unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
        distance = 1.0 - unit @ unit.transpose(0, 2, 1)
        pair = strictly_upper & valid[:, :, None] & valid[:, None, :]
        # Column j sums the pairs (i, j) with i < j; a running sum over j gives every prefix at once.
        pair_sum = np.cumsum(np.where(pair, distance, 0.0).sum(axis=1), axis=1)
        pair_count = np.cumsum(pair.sum(axis=1), axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[start : start + chunk] = np.where(pair_count > 0, pair_sum / pair_count, np.nan)
    return out


def intra_list_diversity_per_user(topk: npt.ArrayLike, item_embeddings: npt.ArrayLike) -> FloatArray:
    """Mean pairwise cosine distance ``1 - cos`` among each user's whole list (see the prefix variant).

    Args:
        topk: ``[U, K]`` int item indices, ``-1`` padding.
        item_embeddings: ``[N, D]`` real item vectors.

    Returns:
        ``[U]`` float64 in ``[0, 2]``; ``nan`` for a user with fewer than two non-padding items.
    """
    prefixes = intra_list_diversity_prefixes(topk, item_embeddings)
    if prefixes.shape[1] == 0:
        return np.full(prefixes.shape[0], np.nan, dtype=np.float64)
    last: FloatArray = prefixes[:, -1]
    return last


def intra_list_diversity(topk: npt.ArrayLike, item_embeddings: npt.ArrayLike) -> float:
    """Intra-list diversity: ``mean_u ILD_u`` over users with at least two non-padding items.

    Args:
        topk: ``[U, K]`` int item indices, ``-1`` padding.
        item_embeddings: ``[N, D]`` real item vectors.

    Returns:
        ILD in ``[0, 2]``; ``nan`` when no list holds two items.
    """
    return _mean_over_users(intra_list_diversity_per_user(topk, item_embeddings))
