"""The one spelling of MLflow metric keys: ``{split}/{metric}_at_{k}[/bucket_{bucket}]``.

Splits are spelled ``val`` and ``test`` everywhere (the evaluation split ``valid`` is logged as ``val``, the
name Lightning modules use), so one metric has one key whichever family logged it. MLflow only accepts
``[A-Za-z0-9_/.\\- :]`` in a key (it rejects ``@`` and ``+``; Lightning's logger would silently drop them).
"""

from __future__ import annotations

import re

ALL_USERS = "all"
"""Bucket name of the rows computed over every evaluated user (no suffix in the key)."""

NO_CUTOFF = 0
"""``k`` of metrics that have no cut-off (AUC, log loss): no ``_at_{k}`` in the key."""

SPLIT_KEYS = {"valid": "val"}
"""Evaluation split name -> its spelling in metric keys (others are kept)."""

_MLFLOW_UNSAFE = re.compile(r"[^A-Za-z0-9_/.\- :]")


def mlflow_key(name: str) -> str:
    """``name`` with every character MLflow rejects in a metric key replaced by ``_``."""
    return _MLFLOW_UNSAFE.sub("_", name)


def split_key(split: str) -> str:
    """How ``split`` is spelled in a metric key: ``valid`` -> ``val``."""
    return SPLIT_KEYS.get(split, split)


def metric_key(split: str, metric: str, k: int, bucket: str = ALL_USERS) -> str:
    """MLflow key of one metric row: ``{split}/{metric}_at_{k}`` plus ``/bucket_{bucket}`` for a bucket.

    ``k = 0`` (no cut-off) drops the ``_at_{k}`` part: ``test/auc``. A bucket's ``+`` becomes ``plus``
    (``"21+"`` -> ``bucket_21plus``); any other character MLflow rejects becomes ``_``.

    Args:
        split: evaluation split, e.g. ``"test"`` or ``"valid"`` (spelled ``val``).
        metric: snake_case metric name, e.g. ``"ndcg"``.
        k: cut-off, >= 0.
        bucket: bucket name; ``"all"`` adds no suffix.

    Returns:
        The key, e.g. ``test/ndcg_at_10`` or ``val/ndcg_at_10/bucket_6-20``.

    Raises:
        ValueError: if split or metric is empty or k < 0.
    """
    if not split or not metric or k < 0:
        raise ValueError(f"need a split, a metric and k >= 0, got {split!r}, {metric!r}, {k}")
    prefix = split_key(split)
    key = f"{prefix}/{metric}" if k == NO_CUTOFF else f"{prefix}/{metric}_at_{k}"
    if bucket != ALL_USERS:
        key += f"/bucket_{bucket.replace('+', 'plus')}"
    return mlflow_key(key)
