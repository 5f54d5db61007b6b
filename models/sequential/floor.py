"""The learning floor: a sequence model that ends below the popularity baseline has not learned.

Early stopping on a plateau, a learning rate of zero or a broken feature all produce a model that trains
"successfully" and ranks worse than MostPop; a scheduled retrain would then register it, and with no
champion yet it would serve. So after training, the model's best validation NDCG@10 is compared with the
best of ``model.floor_baselines`` on the same split: MostPop is scored here through the same evaluator (same
users, same masking), the others count when ``recsys evaluate`` published them for the same features snapshot
(their ``eval_set``). A run below the floor is tagged ``learning_failed`` and marked FAILED in MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from models.sequential.data import SequenceData
from models.sequential.evaluate import RankingEvaluator
from recsys.manifest import MANIFEST_FILE, read_manifest
from recsys.offline import InteractionData
from recsys.paths import RunPaths
from recsys.tables import read_arrow

FLOOR_SPLIT = "valid"
FLOOR_METRIC = "ndcg"
FLOOR_K = 10
MOSTPOP = "mostpop"


@dataclass(frozen=True)
class Floor:
    """The value a model must reach: ``baseline``'s validation NDCG@10 (the best of the floor baselines)."""

    baseline: str
    value: float

    def describe(self) -> str:
        return f"{self.baseline}'s validation NDCG@{FLOOR_K} {self.value:.4f}"


def _mostpop(evaluator: RankingEvaluator, data: SequenceData, interactions: InteractionData) -> float:
    part = data.evaluation[FLOOR_SPLIT]
    ones = np.ones((len(part.users), 1), dtype=np.float32)
    popularity = np.asarray(interactions.item_popularity, dtype=np.float32).reshape(-1, 1)
    evaluation = evaluator.evaluate(FLOOR_SPLIT, part.users, ones, popularity, beyond_accuracy=False)
    return _value(evaluation.metrics)


def _value(table: pd.DataFrame) -> float:
    """NDCG@10 over all users from a metric table (a published one also has a ``split`` column)."""
    if "split" in table.columns:
        table = table[table["split"] == FLOOR_SPLIT]
    rows = table[(table["metric"] == FLOOR_METRIC) & (table["k"] == FLOOR_K) & (table["bucket"] == "all")]
    return float(rows["value"].iloc[0])


def _published(folder: Path, eval_set: str) -> float | None:
    """A published baseline's validation NDCG@10, when it was evaluated on the same snapshot."""
    if not (folder / MANIFEST_FILE).is_file() or not (folder / "metrics" / MANIFEST_FILE).is_file():
        return None
    if read_manifest(folder).extra.get("eval_set") != eval_set:
        return None
    return _value(read_arrow(folder / "metrics").to_pandas())


def learning_floor(
    paths: RunPaths,
    baselines: tuple[str, ...],
    evaluator: RankingEvaluator,
    data: SequenceData,
    interactions: InteractionData,
) -> Floor | None:
    """The best floor baseline on this split; ``None`` when none is configured or available."""
    values: dict[str, float] = {}
    for name in baselines:
        if name == MOSTPOP:
            values[name] = _mostpop(evaluator, data, interactions)
        else:
            published = _published(paths.evaluate(name), interactions.eval_set)
            if published is not None:
                values[name] = published
    if not values:
        return None
    best = max(values, key=lambda name: values[name])
    return Floor(best, values[best])
