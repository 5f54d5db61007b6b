"""Offline evaluation of history-based recommenders on a features snapshot, logged to MLflow.

Protocol (full ranking over the whole catalog, seen items masked, never a sampled catalog):
* ``valid``: the model scores each user's train history; truth = the user's valid items.
* ``test``: history = train + valid items; truth = the user's test items.
The model is fitted on train only. Users without a truth item in a split are not evaluated in it. On large
logs ``evaluation.max_users`` evaluates a seeded uniform sample of the users instead of all of them (the
items are never sampled); the sample is part of the evaluation set's name, so the promotion gate never
compares a sampled evaluation with a full one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from recsys.baselines import HistoryScorer, PureSVD, build_baseline
from recsys.console import print_table, step
from recsys.errors import InputError
from recsys.evaluation import activity_buckets, evaluate_ranking, full_ranking_topk
from recsys.manifest import Manifest, publish_atomically, read_manifest, write_manifest
from recsys.schema import FIRST_INDEX, ITEM_IDX, OOV_INDEX, PADDING_INDEX, SPLIT, USER_IDX
from recsys.stage import PublishedVectors
from recsys.tables import read_arrow

EVALUATE_STAGE = "evaluate"
BASELINE_FAMILY = "baseline"
ITEM_VECTORS = "item_vectors.npy"
USER_VECTORS = "user_vectors.npy"
RESERVED_ITEMS = np.array([PADDING_INDEX, OOV_INDEX], dtype=np.int64)


@dataclass
class InteractionData:
    """Interaction matrices ``[num_users, num_items]`` (index space of the vocabularies) per split."""

    num_users: int
    num_items: int
    matrices: dict[str, sp.csr_matrix]
    item_popularity: np.ndarray
    item_ids: np.ndarray
    content_vectors: np.ndarray | None
    eval_set: str
    # Users per split whose lists are evaluated: every user with a truth item, or a sample of them.
    sampled_users: dict[str, np.ndarray] = field(default_factory=dict)

    def evaluated_users(self, split: str) -> np.ndarray:
        """``[U]`` sorted user indices evaluated in ``split``: those with a truth item (all of them unless
        ``evaluation.max_users`` sampled them)."""
        if split in self.sampled_users:
            return self.sampled_users[split]
        return users_with_interactions(self.matrices[split])

    def history(self, split: str) -> sp.csr_matrix:
        if split == "valid":
            return self.matrices["train"]
        if split == "test":
            return (self.matrices["train"] + self.matrices["valid"]).tocsr()
        raise ValueError(f"no evaluation history for split {split!r}")

    def snapshot_popularity(self) -> np.ndarray:
        """``[N]`` users per item over all splits: what a served model's popularity fallback ranks by (the
        whole snapshot, unlike ``item_popularity``, which is train only to keep evaluation honest)."""
        everything = self.matrices["train"] + self.matrices["valid"] + self.matrices["test"]
        return np.asarray((everything > 0).sum(axis=0)).ravel().astype(np.float64)


def users_with_interactions(matrix: sp.csr_matrix) -> np.ndarray:
    """``[U]`` sorted int64 indices of the non-empty rows of a ``[num_users, N]`` CSR matrix."""
    return np.flatnonzero(np.diff(matrix.indptr) > 0).astype(np.int64)


def sample_users(users: np.ndarray, max_users: int | None, seed: int) -> np.ndarray | None:
    """A sorted seeded uniform sample of ``max_users`` of ``users``, or ``None`` when there are no more
    users than that (nothing to sample). Depends only on the users and the seed, so every model of a
    snapshot is evaluated on the same users."""
    if max_users is None or users.size <= max_users:
        return None
    chosen = np.random.default_rng(seed).choice(users, size=max_users, replace=False)
    return np.sort(chosen).astype(np.int64)


def load_interactions(features: Path, eval_cfg: Mapping[str, Any] | None = None) -> InteractionData:
    """Read ``split``, ``vocab_item`` and ``content`` from a published features stage.

    ``eval_cfg`` (``cfg["evaluation"]``) brings ``max_users`` and ``sample_seed``: without it, or with
    ``max_users: null``, every user with a truth item is evaluated.
    """
    split_manifest = read_manifest(features / "split")
    num_users = int(split_manifest.counts["num_users"])
    num_items = int(split_manifest.counts["num_items"])
    table = read_arrow(features / "split", columns=[USER_IDX, ITEM_IDX, SPLIT]).to_pandas()
    matrices = {}
    for name in ("train", "valid", "test"):
        part = table[table[SPLIT] == name]
        ones = np.ones(len(part), dtype=np.float32)
        matrix = sp.csr_matrix((ones, (part[USER_IDX], part[ITEM_IDX])), shape=(num_users, num_items))
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        matrices[name] = matrix
    popularity = np.asarray(matrices["train"].sum(axis=0)).ravel().astype(np.float64)
    vocab = read_arrow(features / "vocab_item").to_pandas()
    item_ids = np.full(num_items, "", dtype=object)
    item_ids[vocab[ITEM_IDX].to_numpy()] = vocab["item_id"].to_numpy()
    content = _category_vectors(features / "content", num_items) if (features / "content").is_dir() else None
    eval_set = f"{split_manifest.source_fingerprint[:16]}-{split_manifest.config_hash[:16]}"
    limit = None if eval_cfg is None or eval_cfg.get("max_users") is None else int(eval_cfg["max_users"])
    seed = 0 if eval_cfg is None else int(eval_cfg.get("sample_seed", 0))
    sampled = {}
    for name in ("valid", "test"):
        sample = sample_users(users_with_interactions(matrices[name]), limit, seed)
        if sample is not None:
            sampled[name] = sample
    if sampled:
        eval_set += f"-users{limit}s{seed}"
    return InteractionData(num_users, num_items, matrices, popularity, item_ids, content, eval_set, sampled)


def _category_vectors(folder: Path, num_items: int) -> np.ndarray | None:
    """Multi-hot category vectors per item, the content representation for intra-list diversity until a
    text encoder's embeddings exist."""
    content = read_arrow(folder, columns=[ITEM_IDX, "category_idx"]).to_pandas()
    width = max((max(c) for c in content["category_idx"] if len(c)), default=FIRST_INDEX - 1) + 1
    if width <= FIRST_INDEX:
        return None
    vectors = np.zeros((num_items, width), dtype=np.float32)
    for item, categories in zip(content[ITEM_IDX], content["category_idx"], strict=True):
        vectors[item, list(categories)] = 1.0
    return vectors


@dataclass
class SplitEvaluation:
    split: str
    users: np.ndarray
    topk_items: np.ndarray
    topk_scores: np.ndarray
    metrics: pd.DataFrame


@dataclass
class EvaluateResult:
    model: str
    data: InteractionData
    scorer: HistoryScorer
    splits: dict[str, SplitEvaluation] = field(default_factory=dict)
    # A baseline's composed ``model`` group and seed: enough to refit it on the same features
    # (:class:`BaselineScorerSource`); None for models that publish their weights instead.
    model_config: dict[str, Any] | None = None
    seed: int = 0


def evaluate_scorer(
    scorer: HistoryScorer, data: InteractionData, eval_cfg: Mapping[str, Any]
) -> dict[str, SplitEvaluation]:
    ks = [int(k) for k in eval_cfg["ks"]]
    train_counts = np.asarray(data.matrices["train"].sum(axis=1)).ravel()
    out = {}
    for split in eval_cfg["splits"]:
        truth_all = data.matrices[str(split)]
        users = data.evaluated_users(str(split))
        history = data.history(str(split))

        def score_fn(batch: np.ndarray, history: sp.csr_matrix = history) -> np.ndarray:
            return scorer.score(history[batch])

        items, scores = full_ranking_topk(
            score_fn,
            users,
            history,
            max(ks),
            batch_size=int(eval_cfg["batch_size"]),
            excluded_items=RESERVED_ITEMS,
        )
        buckets = activity_buckets(train_counts[users], [int(e) for e in eval_cfg["bucket_edges"]])
        metrics = evaluate_ranking(
            items,
            truth_all[users],
            ks,
            item_popularity=data.item_popularity,
            num_items=data.num_items - FIRST_INDEX,
            buckets=buckets,
            item_embeddings=data.content_vectors,
        )
        out[str(split)] = SplitEvaluation(str(split), users, items, scores, metrics)
    return out


def recommendations_table(result: EvaluateResult, split: str, model_version: str) -> pa.Table:
    """The one Recommendations table models and baselines share: user_idx, item_idx list, score list."""
    evaluation = result.splits[split]
    items = [row[row >= 0].tolist() for row in evaluation.topk_items]
    scores = [s[: len(i)].tolist() for s, i in zip(evaluation.topk_scores, items, strict=True)]
    return pa.table(
        {
            USER_IDX: pa.array(evaluation.users, pa.int64()),
            ITEM_IDX: pa.array(items, pa.list_(pa.int64())),
            "score": pa.array(scores, pa.list_(pa.float32())),
            "model": pa.array([result.model] * len(items)),
            "model_version": pa.array([model_version] * len(items)),
        }
    )


def write_evaluation(result: EvaluateResult, folder: Path, model_version: str, run_id: str) -> None:
    """Publish metrics (all splits), test recommendations and, for vector models, their vectors."""
    import pyarrow.parquet as pq

    with publish_atomically(folder) as staging:
        metrics = pd.concat([e.metrics.assign(split=s) for s, e in result.splits.items()], ignore_index=True)
        for name, table in (
            ("metrics", pa.Table.from_pandas(metrics, preserve_index=False)),
            *(
                (f"recommendations_{s}", recommendations_table(result, s, model_version))
                for s in result.splits
            ),
        ):
            (staging / name).mkdir()
            pq.write_table(table, staging / name / "part-0.parquet")
            schema = [{"name": f.name, "type": str(f.type)} for f in table.schema]
            write_manifest(
                staging / name,
                Manifest(
                    name,
                    table.num_rows,
                    schema,
                    {"num_items": result.data.num_items},
                    "",
                    result.data.eval_set,
                    extra={"model": result.model, "model_version": model_version, "run_id": run_id},
                ),
            )
        if isinstance(result.scorer, PureSVD):
            np.save(staging / ITEM_VECTORS, result.scorer.item_vectors())
        write_manifest(
            staging,
            Manifest(
                EVALUATE_STAGE,
                len(metrics),
                [],
                {"num_items": result.data.num_items},
                "",
                result.data.eval_set,
                extra={
                    "model": result.model,
                    "model_version": model_version,
                    "run_id": run_id,
                    "eval_set": result.data.eval_set,
                    **(
                        {}
                        if result.model_config is None
                        else {
                            "family": BASELINE_FAMILY,
                            "model_config": result.model_config,
                            "seed": result.seed,
                        }
                    ),
                },
            ),
        )


def fit_and_evaluate(cfg: Mapping[str, Any], features: Path) -> EvaluateResult:
    model_cfg = cfg["model"]
    with step(f"load features from {features}"):
        data = load_interactions(features, cfg["evaluation"])
    scorer = build_baseline(model_cfg, int(cfg["seed"]))
    with step(f"fit {scorer.name} on {data.matrices['train'].nnz:,} train interactions"):
        scorer.fit(data.matrices["train"])
    result = EvaluateResult(scorer.name, data, scorer, model_config=dict(model_cfg), seed=int(cfg["seed"]))
    users = ", ".join(f"{len(data.evaluated_users(str(s))):,} {s}" for s in cfg["evaluation"]["splits"])
    with step(f"full-ranking evaluation of {users} users over {data.num_items - FIRST_INDEX:,} items"):
        result.splits = evaluate_scorer(scorer, data, cfg["evaluation"])
    return result


def print_metrics(result: EvaluateResult, ks_shown: tuple[int, ...] = (10, 20)) -> None:
    rows = []
    for split, evaluation in result.splits.items():
        table = evaluation.metrics
        overall = table[(table["bucket"] == "all") & (table["k"].isin(ks_shown))]
        for r in overall.sort_values(["metric", "k"]).itertuples(index=False):
            rows.append((split, f"{r.metric}@{r.k}", f"{r.value:.4f}"))
    print_table(f"{result.model}: full-ranking metrics", ["split", "metric", "value"], rows)


def read_published_vectors(folder: Path) -> PublishedVectors:
    """The vectors a retriever published with :func:`write_evaluation` (``user_vectors.npy`` when its
    manifest names one), with the provenance its manifest records.

    Raises:
        ManifestError: the folder has no manifest (not published).
        InputError: the model published no item vectors (it is not a vector model).
    """
    info = read_manifest(folder)
    vectors = folder / ITEM_VECTORS
    if not vectors.is_file():
        raise InputError(
            f"{folder}: model {info.extra.get('model')!r} has no item vectors to index (vector models: "
            "puresvd, sasrec, molar); run `recsys evaluate model=puresvd` or `recsys train model=sasrec`."
        )
    users = info.extra.get("user_vectors")
    return PublishedVectors(
        folder=folder,
        item_vectors=np.load(vectors),
        user_vectors=None if users is None else np.load(folder / str(users)),
        model_version=str(info.extra["model_version"]),
        run_id=str(info.extra["run_id"]),
        eval_set=str(info.extra["eval_set"]),
    )


def histories_matrix(histories: Sequence[np.ndarray], num_items: int) -> sp.csr_matrix:
    """``[U, N]`` 0/1 matrix of ``U`` histories (item-index arrays): the input of a fold-in scorer."""
    lengths = np.array([len(h) for h in histories], dtype=np.int64)
    rows = np.repeat(np.arange(len(histories), dtype=np.int64), lengths)
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if len(histories) else rows
    ones = np.ones(rows.size, dtype=np.float32)
    matrix = sp.csr_matrix((ones, (rows, cols)), shape=(len(histories), num_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


@dataclass
class FittedBaseline:
    """A baseline refitted on the snapshot's train split, scoring item-index histories."""

    scorer: HistoryScorer
    num_items: int

    def score(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.asarray(self.scorer.score(histories_matrix(histories, self.num_items)), dtype=np.float32)


class BaselineScorerSource:
    """The baseline family's :class:`recsys.stage.ScorerSource`: a baseline publishes metrics, not weights,
    so it is refitted on the train split from the ``model_config`` and ``seed`` its manifest recorded (the
    fit is deterministic, so this is the model ``recsys evaluate`` evaluated)."""

    def load(self, folder: Path, features: Path) -> FittedBaseline:
        extra = read_manifest(folder).extra
        if "model_config" not in extra:
            raise InputError(
                f"{folder / 'manifest.json'}: no model_config recorded (published by an older version); "
                f"rerun `recsys evaluate model={extra.get('model', '<name>')}`."
            )
        data = load_interactions(features)
        scorer = build_baseline(extra["model_config"], int(extra.get("seed", 0)))
        with step(f"refit {scorer.name} on {data.matrices['train'].nnz:,} train interactions"):
            scorer.fit(data.matrices["train"])
        return FittedBaseline(scorer, data.num_items)
