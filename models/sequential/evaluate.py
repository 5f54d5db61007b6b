"""Full-ranking evaluation of a sequence model through ``recsys.evaluation`` (the protocol of
``recsys evaluate``: whole catalog, the user's earlier items and the reserved indices masked).

A sequence model enters only through its vectors: user ``users[r]`` is scored by
``user_vectors[r] @ item_vectors.T``. Besides the user-activity buckets of ``evaluate_ranking``, the ranking
metrics are also reported on the targets whose item had at most ``few_interactions_max`` training
interactions (bucket ``items_le<max>``): that is where content should help an ID model most.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from recsys.evaluation import activity_buckets, evaluate_ranking, full_ranking_topk
from recsys.metrics.ranking import RANKING_METRICS
from recsys.offline import RESERVED_ITEMS, InteractionData, SplitEvaluation
from recsys.schema import FIRST_INDEX


def few_interactions_bucket(max_interactions: int) -> str:
    """Bucket name of the rare-item rows, e.g. ``items_le20``."""
    return f"items_le{max_interactions}"


class RankingEvaluator:
    """Scores every evaluated user of a split against the whole catalog and returns the tidy metric table.

    Args:
        data: interaction matrices of the snapshot (``recsys.offline.load_interactions``): the truth of a
            split and the items masked (train for valid, train + valid for test).
        eval_cfg: ``cfg["evaluation"]`` (``ks``, ``bucket_edges``, ``batch_size``).
        few_interactions_max: rare-item threshold in training interactions (inclusive).
    """

    def __init__(self, data: InteractionData, eval_cfg: Mapping[str, Any], few_interactions_max: int) -> None:
        self.data = data
        self.ks = [int(k) for k in eval_cfg["ks"]]
        self.edges = [int(e) for e in eval_cfg["bucket_edges"]]
        self.batch_size = int(eval_cfg["batch_size"])
        self.few_max = few_interactions_max
        self.train_counts = np.asarray(data.matrices["train"].sum(axis=1)).ravel()
        self.rare_items = sp.diags((data.item_popularity <= few_interactions_max).astype(np.float32))

    def evaluate(
        self,
        split: str,
        users: np.ndarray,
        user_vectors: np.ndarray,
        item_vectors: np.ndarray,
        *,
        beyond_accuracy: bool = True,
    ) -> SplitEvaluation:
        """Top-K lists and metrics for ``users [U]`` with ``user_vectors [U, D]`` and ``item_vectors [N, D]``.

        The users are ``data.evaluated_users(split)`` (a sample of them when ``evaluation.max_users`` is set);
        those without a vector (no sequence row) are not evaluated; ``beyond_accuracy=False``
        (used for the per-epoch validation) keeps only the ranking metrics' overall rows, which is cheaper.
        """
        truth_all = self.data.matrices[split]
        evaluated = self.data.evaluated_users(split)
        row_of = np.full(self.data.num_users, -1, dtype=np.int64)
        row_of[users] = np.arange(users.size)
        evaluated = evaluated[row_of[evaluated] >= 0]
        items_t = np.ascontiguousarray(item_vectors.T, dtype=np.float32)
        queries = np.asarray(user_vectors, dtype=np.float32)

        def score_fn(batch: np.ndarray) -> np.ndarray:
            scores: np.ndarray = queries[row_of[batch]] @ items_t
            return scores

        topk, scores = full_ranking_topk(
            score_fn,
            evaluated,
            self.data.history(split),
            max(self.ks),
            batch_size=self.batch_size,
            excluded_items=RESERVED_ITEMS,
        )
        truth = truth_all[evaluated]
        common: dict[str, Any] = {
            "item_popularity": self.data.item_popularity,
            "num_items": self.data.num_items - FIRST_INDEX,
        }
        if not beyond_accuracy:
            metrics = evaluate_ranking(topk, truth, self.ks, **common)
            metrics = metrics[metrics["metric"].isin(RANKING_METRICS)]
            return SplitEvaluation(split, evaluated, topk, scores, metrics.reset_index(drop=True))
        buckets = activity_buckets(self.train_counts[evaluated], self.edges)
        metrics = evaluate_ranking(
            topk, truth, self.ks, buckets=buckets, item_embeddings=self.data.content_vectors, **common
        )
        rare = evaluate_ranking(topk, sp.csr_matrix(truth @ self.rare_items), self.ks, **common)
        rare = rare[rare["metric"].isin(RANKING_METRICS)].assign(bucket=few_interactions_bucket(self.few_max))
        table = pd.concat([metrics, rare], ignore_index=True)
        return SplitEvaluation(split, evaluated, topk, scores, table)
