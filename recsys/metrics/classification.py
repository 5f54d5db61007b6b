"""Pointwise metrics for click-through models: AUC, group AUC, log loss and RMSE, pure numpy.

Shapes: M samples (impressions). Labels are binary (0/1, bool or numeric); scores are any real numbers whose
order matters (AUC), probabilities are in [0, 1] (log loss).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

DEFAULT_LOG_LOSS_EPS = 1e-7
"""Probabilities are clipped to ``[eps, 1 - eps]``: a confident mistake costs ``-log(eps)``, not infinity."""


def _binary_labels(labels: npt.ArrayLike, name: str = "labels") -> FloatArray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D [M], got shape {arr.shape}")
    values = arr.astype(np.float64)
    if not np.isin(values, (0.0, 1.0)).all():
        bad = values[~np.isin(values, (0.0, 1.0))][0]
        raise ValueError(f"{name} must be binary 0/1, found {bad}")
    return values


def _real_values(values: npt.ArrayLike, size: int, name: str) -> FloatArray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},) like labels, got {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} holds NaN at position {int(np.flatnonzero(np.isnan(arr))[0])}")
    return arr


def _grouped_auc(labels: FloatArray, scores: FloatArray, codes: IntArray) -> tuple[FloatArray, IntArray]:
    """Per-group Mann–Whitney AUC with average ranks for ties, computed with one sort and no Python loop.

    Args:
        labels: ``[M]`` float64 0/1.
        scores: ``[M]`` float64, no NaN.
        codes: ``[M]`` int64 group codes in ``0..G-1``.

    Returns:
        ``(auc [G] float64, size [G] int64)``; auc is ``nan`` for groups that lack either class.
    """
    num_groups = int(codes.max()) + 1 if codes.size else 0
    order = np.lexsort((scores, codes))
    code_s, score_s, label_s = codes[order], scores[order], labels[order]
    size = np.bincount(codes, minlength=num_groups).astype(np.int64)
    group_start = np.concatenate(([0], np.cumsum(size)[:-1])).astype(np.int64)
    # A tie block is a run of equal (group, score); every member gets the block's mean 1-based rank.
    new_block = np.ones(code_s.size, dtype=np.bool_)
    new_block[1:] = (code_s[1:] != code_s[:-1]) | (score_s[1:] != score_s[:-1])
    block_start = np.flatnonzero(new_block)
    block_end = np.append(block_start[1:], code_s.size) - 1
    block_id = np.cumsum(new_block) - 1
    mean_position = (block_start + block_end) / 2.0
    rank = mean_position[block_id] - group_start[code_s] + 1.0
    num_pos = np.bincount(code_s, weights=label_s, minlength=num_groups)
    pos_rank_sum = np.bincount(code_s, weights=rank * label_s, minlength=num_groups)
    num_neg = size - num_pos
    with np.errstate(divide="ignore", invalid="ignore"):
        auc: FloatArray = (pos_rank_sum - num_pos * (num_pos + 1.0) / 2.0) / (num_pos * num_neg)
    auc[(num_pos == 0) | (num_neg == 0)] = np.nan
    return auc, size


def auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve, from the Mann–Whitney U statistic.

    ``AUC = (sum_{i: y_i=1} rank_i - P (P + 1) / 2) / (P * Q)`` where ``rank_i`` is the 1-based rank of
    ``scores[i]`` in ascending order, tied scores share their average rank (a tied positive/negative pair
    counts 1/2), P is the number of positives and Q of negatives. Equals ``sklearn.metrics.roc_auc_score``.

    Args:
        labels: ``[M]`` binary 0/1.
        scores: ``[M]`` real scores, higher = more likely positive; no NaN.

    Returns:
        AUC in ``[0, 1]``; ``nan`` when only one class is present (or M = 0).

    Raises:
        ValueError: if labels are not binary, shapes differ or scores hold NaN.
    """
    y = _binary_labels(labels)
    s = _real_values(scores, y.size, "scores")
    if y.size == 0:
        return float("nan")
    values, _ = _grouped_auc(y, s, np.zeros(y.size, dtype=np.int64))
    return float(values[0])


def gauc(labels: npt.ArrayLike, scores: npt.ArrayLike, groups: npt.ArrayLike) -> float:
    """Group AUC: per-group AUC averaged with weights equal to each group's number of samples.

    ``GAUC = sum_g M_g * AUC_g / sum_g M_g`` over the groups g (usually users) that hold both a positive and a
    negative; groups with a single class have no AUC and are skipped (they add to neither sum). ``AUC_g`` is
    ``auc`` on the group's samples (average ranks for ties). One sort over all samples, no loop over groups.

    Args:
        labels: ``[M]`` binary 0/1.
        scores: ``[M]`` real scores; no NaN.
        groups: ``[M]`` group keys of any sortable dtype (user indices, ids).

    Returns:
        GAUC in ``[0, 1]``; ``nan`` when no group holds both classes.

    Raises:
        ValueError: if labels are not binary, shapes differ or scores hold NaN.
    """
    y = _binary_labels(labels)
    s = _real_values(scores, y.size, "scores")
    keys = np.asarray(groups)
    if keys.shape != y.shape:
        raise ValueError(f"groups must have shape {y.shape} like labels, got {keys.shape}")
    if y.size == 0:
        return float("nan")
    _, codes = np.unique(keys, return_inverse=True)
    values, size = _grouped_auc(y, s, codes.astype(np.int64).reshape(-1))
    valid = ~np.isnan(values)
    if not valid.any():
        return float("nan")
    return float(np.average(values[valid], weights=size[valid]))


def log_loss(labels: npt.ArrayLike, probabilities: npt.ArrayLike, eps: float = DEFAULT_LOG_LOSS_EPS) -> float:
    """Mean binary cross-entropy (natural log) of predicted click probabilities.

    ``logloss = -(1/M) sum_i [y_i log p_i + (1 - y_i) log(1 - p_i)]`` with ``p_i`` clipped to
    ``[eps, 1 - eps]``. Equals ``sklearn.metrics.log_loss`` for probabilities inside that interval.

    Args:
        labels: ``[M]`` binary 0/1.
        probabilities: ``[M]`` predicted P(y = 1), in ``[0, 1]``.
        eps: clipping margin, ``0 < eps < 0.5``.

    Returns:
        The mean log loss (>= 0).

    Raises:
        ValueError: if M = 0, labels are not binary, shapes differ, eps is out of range or a probability is
            outside ``[0, 1]``.
    """
    y = _binary_labels(labels)
    p = _real_values(probabilities, y.size, "probabilities")
    if y.size == 0:
        raise ValueError("log_loss needs at least one sample")
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    if ((p < 0.0) | (p > 1.0)).any():
        raise ValueError(f"probabilities must be in [0, 1], found {p[(p < 0.0) | (p > 1.0)][0]}")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def rmse(y_true: npt.ArrayLike, y_pred: npt.ArrayLike) -> float:
    """Root mean squared error, ``sqrt((1/M) sum_i (y_i - yhat_i)^2)``.

    Args:
        y_true: ``[M]`` targets (e.g. ratings).
        y_pred: ``[M]`` predictions.

    Returns:
        The RMSE (>= 0).

    Raises:
        ValueError: if M = 0, the shapes differ or a value is NaN.
    """
    t = np.asarray(y_true, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array, got shape {t.shape}")
    t = _real_values(t, t.size, "y_true")
    p = _real_values(y_pred, t.size, "y_pred")
    return float(np.sqrt(np.mean((t - p) ** 2)))
