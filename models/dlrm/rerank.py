"""Two-stage evaluation on the test split: retriever candidates, then the DLRM ranker re-orders them.

Shapes: U evaluated (test) users, K candidates per user (``evaluation.candidates_k``), N items, D retriever
dimensions, Q feature rows (one per (user, candidate)), E events.

Protocol, per test user (a user with at least one test item):

1. Candidates. The published candidates (``recsys index``) exclude *every* item of the user, test items
   included, so they cannot be evaluated. They are rebuilt here the way the offline protocol ranks: the
   user vector is the fold-in of the train + valid history (``history [U, N] @ item_vectors [N, D]``) with the
   retriever's ``evaluate/<retriever>/item_vectors.npy``, scored against every item with an exact numpy
   inner product (``recsys.evaluation.full_ranking_topk``), train + valid items and the reserved indices
   masked, top K kept. Exact search (what the flat FAISS index computes) is used rather than the saved
   index so that retrieval recall is not mixed with approximate-search error, and the numbers equal those of
   ``recsys evaluate`` for the same vectors.
2. Features. Each (user, candidate) gets a CTR row at the user's test timestamp (the earliest test event's,
   the only one under leave-one-out) with point-in-time statistics over the ``split`` events strictly before
   that timestamp, as ``features/ctr.py`` defines them (:func:`point_in_time_features`); categories come
   from ``content``, user attributes (e.g. gender / occupation) from ``users``.
3. Re-ranking. The ranker's probabilities re-order each list (stable: equal scores keep retrieval order).

Both orders are scored with ``recsys.evaluation.evaluate_ranking`` against the user's test items.

``models.dlrm.two_stage.rerank_stage`` is the ``rerank`` stage: it reads the ranker ``recsys train``
published under ``train/<model>``, logs the two-stage metrics to its own MLflow run and publishes both
orders' metric tables under ``rerank/<model>-<retriever>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp
import torch

from models.dlrm.batch import CTRBatch
from models.dlrm.config import DLRMConfig
from models.dlrm.data import CTRBatchBuilder
from recsys.evaluation import evaluate_ranking, full_ranking_topk
from recsys.manifest import Manifest, publish_atomically, write_manifest
from recsys.offline import ITEM_VECTORS, RESERVED_ITEMS, InteractionData, load_interactions
from recsys.paths import RERANK, RunPaths
from recsys.schema import FIRST_INDEX, ITEM_ID, ITEM_IDX, LABEL, RATING, SPLIT, TIMESTAMP, USER_IDX
from recsys.tables import read_arrow
from recsys.tracking.keys import ALL_USERS

METRICS_OUTPUT = "metrics"
TEST_SPLIT = "test"
HISTORY_SPLITS = ("train", "valid")
RECENT_ITEMS = "recent_item_idx"
CATEGORY_IDX = "category_idx"
NDCG = "ndcg"
RECALL = "recall"
HEADLINE_K = 10
PAD_ITEM = -1
IMPLICIT_LABEL = 1
"""An event with neither label nor rating is an implicit positive (``features.ctr.label_events``)."""

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class Ranker(Protocol):
    """What the re-ranking needs: the model config (columns) and ``score(batch) -> [B]`` probabilities."""

    @property
    def cfg(self) -> DLRMConfig: ...

    def score(self, batch: CTRBatch) -> torch.Tensor: ...


@dataclass(frozen=True)
class TwoStageResult:
    """Outcome of :func:`two_stage_evaluation`.

    Attributes:
        users: ``[U]`` evaluated user indices.
        timestamps: ``[U]`` the timestamp each user's rows were built at.
        candidates: ``[U, K]`` retrieval order, best first, ``-1`` padding.
        reranked: ``[U, K]`` the same items in ranker order (padding last).
        ranker_scores: ``[U, K]`` ranker probabilities aligned with ``candidates`` (``-inf`` on padding).
        retrieval_metrics: tidy ``metric / k / bucket / value`` table of the retrieval order.
        reranked_metrics: the same for the re-ranked order.
        retrieval_ndcg_at_10: NDCG@10 of the retrieval order, all users.
        reranked_ndcg_at_10: NDCG@10 of the re-ranked order, all users.
        candidate_recall: recall@K of the candidate lists (the ceiling of any re-ranking).
    """

    users: IntArray
    timestamps: IntArray
    candidates: IntArray
    reranked: IntArray
    ranker_scores: npt.NDArray[np.float32]
    retrieval_metrics: pd.DataFrame
    reranked_metrics: pd.DataFrame
    retrieval_ndcg_at_10: float
    reranked_ndcg_at_10: float
    candidate_recall: float


def event_labels(events: pd.DataFrame, rating_threshold: float) -> npt.NDArray[np.int64]:
    """``[E]`` 0/1 labels as ``features.ctr.label_events``: label, else ``rating >= threshold``, else 1."""
    label = (
        pd.to_numeric(events[LABEL], errors="coerce")
        if LABEL in events
        else pd.Series(np.nan, index=events.index)
    )
    if RATING in events:
        from_rating = (events[RATING] >= rating_threshold).astype(np.float64).where(events[RATING].notna())
        label = label.fillna(from_rating)
    return np.asarray(label.fillna(IMPLICIT_LABEL), dtype=np.int64)


def _prior_positions(
    keys: IntArray, times: IntArray, query_keys: IntArray, query_times: IntArray
) -> tuple[IntArray, IntArray]:
    """For events sorted by (key, time), where each query's key starts and how far events before it reach.

    Returns:
        ``(start [Q], end [Q])``: events ``start:end`` of the sorted arrays have the query's key and a time
        strictly smaller than the query's.
    """
    instants = np.unique(np.concatenate([times, query_times]))
    width = np.int64(instants.size + 1)
    composite = keys * width + np.searchsorted(instants, times)
    query = query_keys * width + np.searchsorted(instants, query_times)
    end = np.searchsorted(composite, query, side="left").astype(np.int64)
    start = np.searchsorted(composite, query_keys * width, side="left").astype(np.int64)
    return start, end


def _ratio(numerator: IntArray, denominator: IntArray) -> pa.Array:
    """``numerator / denominator`` as float64, null where the denominator is 0 (no history)."""
    empty = denominator == 0
    ratio = numerator / np.where(empty, 1, denominator)
    return pa.array(ratio.astype(np.float64), mask=empty)


def point_in_time_features(
    events: pd.DataFrame,
    query_users: IntArray,
    query_items: IntArray,
    query_times: IntArray,
    recent_items: int,
) -> pa.Table:
    """CTR statistics of ``Q`` (user, item, time) queries over the events strictly before each time.

    Definitions are those of ``features/ctr.py``: counts of events, positives = events labelled 1, CTR =
    positives / count (null without history), recent items = the items of the user's last ``recent_items``
    events strictly before the time, oldest first, events ordered by (timestamp, item_id). (For a query at
    an event's own time this is the same bag the features stage builds, except that same-second events
    never use up slots of the window here.) Vectorised: events are sorted once per side and each query is
    located with ``np.searchsorted``.

    Args:
        events: ``E`` events with ``user_idx``, ``item_idx``, ``timestamp``, ``label`` (0/1, resolved with
            :func:`event_labels`) and optionally ``item_id`` (raw id, the tie order of equal timestamps;
            ``item_idx`` otherwise).
        query_users: ``[Q]`` user indices.
        query_items: ``[Q]`` item indices.
        query_times: ``[Q]`` timestamps.
        recent_items: size of the recent-items bag.

    Returns:
        Arrow table of ``Q`` rows: ``user_idx, item_idx, timestamp, recent_item_idx (list<int64>)``,
        ``user_count_before, user_positives_before, user_ctr_before`` and the ``item_`` ones.
    """
    users = np.asarray(events[USER_IDX], dtype=np.int64)
    items = np.asarray(events[ITEM_IDX], dtype=np.int64)
    times = np.asarray(events[TIMESTAMP], dtype=np.int64)
    labels = np.asarray(events[LABEL], dtype=np.int64)
    tie = events[ITEM_ID].astype(str).to_numpy() if ITEM_ID in events else items
    q_users = np.asarray(query_users, dtype=np.int64)
    q_items = np.asarray(query_items, dtype=np.int64)
    q_times = np.asarray(query_times, dtype=np.int64)
    columns: dict[str, pa.Array] = {
        USER_IDX: pa.array(q_users),
        ITEM_IDX: pa.array(q_items),
        TIMESTAMP: pa.array(q_times),
    }
    for side, keys, q_keys in (("user", users, q_users), ("item", items, q_items)):
        order = np.lexsort((tie, times, keys))
        start, end = _prior_positions(keys[order], times[order], q_keys, q_times)
        cumulative = np.concatenate([[0], np.cumsum(labels[order])]).astype(np.int64)
        count = end - start
        positives = cumulative[end] - cumulative[start]
        columns[f"{side}_count_before"] = pa.array(count)
        columns[f"{side}_positives_before"] = pa.array(positives)
        columns[f"{side}_ctr_before"] = _ratio(positives, count)
        if side == "user":
            first = np.maximum(start, end - recent_items)
            lengths = end - first
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            flat = np.repeat(first - offsets[:-1], lengths) + np.arange(offsets[-1], dtype=np.int64)
            recent = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(items[order][flat]))
            columns[RECENT_ITEMS] = recent.cast(pa.list_(pa.int64()))
    return pa.table(columns)


def _lookup(table: pa.Table, key: str, column: str, ids: IntArray) -> pa.Array:
    """``table[column]`` of the row whose ``key`` equals each id (null where none): ``[len(ids)]``."""
    keys = np.asarray(table.column(key).to_numpy(), dtype=np.int64)
    size = int(max(keys.max(initial=-1), ids.max(initial=-1))) + 1
    row_of = np.full(size, -1, dtype=np.int64)
    row_of[keys] = np.arange(keys.size)
    rows = row_of[ids]
    return table.column(column).combine_chunks().take(pa.array(rows, mask=rows < 0))


def candidate_rows(
    features: Path,
    cfg: DLRMConfig,
    events: pd.DataFrame,
    users: IntArray,
    times: IntArray,
    candidates: IntArray,
    recent_items: int,
) -> tuple[pa.Table, npt.NDArray[np.bool_]]:
    """CTR rows for every real candidate of every user at the user's time.

    Args:
        features: the features stage folder (``content`` and ``users`` outputs are read from it).
        cfg: model config (which user attribute columns are needed).
        events: ``split`` events with resolved labels (see :func:`point_in_time_features`).
        users: ``[U]`` user indices.
        times: ``[U]`` timestamps the rows are built at.
        candidates: ``[U, K]`` item indices, ``-1`` padding.
        recent_items: size of the recent-items bag.

    Returns:
        ``(rows, valid)``: ``Q = valid.sum()`` rows in row-major order of ``candidates[valid]`` and the
        ``[U, K]`` mask of real candidates.
    """
    valid = candidates != PAD_ITEM
    per_user = valid.sum(axis=1)
    q_users = np.repeat(users, per_user)
    table = point_in_time_features(
        events, q_users, candidates[valid], np.repeat(times, per_user), recent_items
    )
    table = table.append_column(LABEL, pa.array(np.zeros(table.num_rows, dtype=np.int64)))
    if CATEGORY_IDX in cfg.sparse_features and (features / "content").is_dir():
        content = read_arrow(features / "content", columns=[ITEM_IDX, CATEGORY_IDX])
        table = table.append_column(CATEGORY_IDX, _lookup(content, ITEM_IDX, CATEGORY_IDX, candidates[valid]))
    if (features / "users").is_dir():
        attributes = read_arrow(features / "users")
        for name in cfg.sparse_features:
            if name in attributes.column_names and name not in table.column_names:
                table = table.append_column(name, _lookup(attributes, USER_IDX, name, q_users))
    return table, valid


def score_rows(ranker: Ranker, rows: pa.Table, source: Path, batch_rows: int) -> npt.NDArray[np.float32]:
    """``[Q]`` ranker probabilities of ``rows``, ``batch_rows`` rows per batch (no gradients)."""
    builder = CTRBatchBuilder(ranker.cfg, source)
    builder.check_columns(rows.column_names)
    scores = [np.zeros(0, dtype=np.float32)]
    with torch.no_grad():
        for start in range(0, rows.num_rows, batch_rows):
            batch = builder(rows.slice(start, batch_rows))
            scores.append(ranker.score(batch).detach().cpu().numpy().astype(np.float32))
    return np.concatenate(scores)


def rerank(candidates: IntArray, scores: npt.NDArray[np.float32]) -> IntArray:
    """``[U, K]`` candidates re-ordered by descending ``[U, K]`` scores (stable; ``-1`` padding last)."""
    keyed = np.where(candidates == PAD_ITEM, -np.inf, scores)
    order = np.argsort(-keyed, axis=1, kind="stable")
    return np.take_along_axis(candidates, order, axis=1)


def headline(metrics: pd.DataFrame, metric: str, k: int) -> float:
    """The all-users value of ``metric@k`` from a tidy ``evaluate_ranking`` table."""
    row = metrics[(metrics["metric"] == metric) & (metrics["k"] == k) & (metrics["bucket"] == ALL_USERS)]
    return float(row["value"].iloc[0])


def two_stage_evaluation(cfg: Mapping[str, Any], module: Ranker, retriever: str) -> TwoStageResult:
    """Retrieval top-K_candidates, then DLRM re-ranking, both evaluated on the test split.

    Args:
        cfg: full run config (``paths``, ``run``, ``evaluation``, ``features.ctr``).
        module: trained ranker (``DLRMLitModule``) with ``cfg`` and ``score(batch)``.
        retriever: evaluated vector model whose ``item_vectors.npy`` gives the candidates.

    Returns:
        :class:`TwoStageResult` (metrics of both orders at ``evaluation.ks`` up to K and at K).

    Raises:
        FileNotFoundError: the retriever has no item vectors (run ``recsys evaluate model=puresvd``).
    """
    paths = RunPaths.from_cfg(cfg)
    features = paths.features
    vectors_path = paths.evaluate(retriever) / ITEM_VECTORS
    if not vectors_path.is_file():
        raise FileNotFoundError(f"{vectors_path}: no item vectors; run `recsys evaluate model={retriever}`.")
    vectors = np.load(vectors_path).astype(np.float32)
    data = load_interactions(features, cfg["evaluation"])
    k = int(cfg["evaluation"]["candidates_k"])
    truth: sp.csr_matrix = data.matrices[TEST_SPLIT]
    users = data.evaluated_users(TEST_SPLIT)
    history = data.history(TEST_SPLIT)

    def fold_in(batch: np.ndarray) -> npt.NDArray[np.float32]:
        """``[B, N]`` inner products of the users' fold-in vectors ``[B, D]`` with every item."""
        user_vectors = np.asarray(history[batch] @ vectors, dtype=np.float32)
        scores: npt.NDArray[np.float32] = user_vectors @ vectors.T
        return scores

    candidates, _ = full_ranking_topk(
        fold_in, users, history, k, int(cfg["evaluation"]["batch_size"]), excluded_items=RESERVED_ITEMS
    )

    events = read_arrow(features / "split").to_pandas()
    ctr_cfg = cfg["features"]["ctr"]
    events[LABEL] = event_labels(events, float(ctr_cfg["rating_threshold"]))
    test = events[events[SPLIT] == TEST_SPLIT].groupby(USER_IDX)[TIMESTAMP].min()
    times = test.reindex(users).to_numpy().astype(np.int64)
    rows, valid = candidate_rows(
        features, module.cfg, events, users, times, candidates, int(ctr_cfg["recent_items"])
    )
    flat = score_rows(module, rows, features / "ctr", module.cfg.batch_size)
    return evaluate_orders(cfg, data, users, times, candidates, scatter_scores(valid, flat), truth[users])


def scatter_scores(valid: npt.NDArray[np.bool_], flat: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``[U, K]`` ranker scores from the ``[Q]`` scores of the real candidates (``-inf`` on padding)."""
    scores = np.full(valid.shape, -np.inf, dtype=np.float32)
    scores[valid] = flat
    return scores


def evaluate_orders(
    cfg: Mapping[str, Any],
    data: InteractionData,
    users: IntArray,
    times: IntArray,
    candidates: IntArray,
    ranker_scores: npt.NDArray[np.float32],
    truth: sp.csr_matrix,
) -> TwoStageResult:
    """Re-rank ``candidates`` by ``ranker_scores`` and evaluate both orders against ``truth`` (``[U, N]``,
    rows aligned with ``users``) at ``evaluation.ks`` up to K, at 10 (K when shorter) and at K."""
    reranked = rerank(candidates, ranker_scores)
    k = candidates.shape[1]
    cut = min(HEADLINE_K, k)
    ks = sorted({*(int(x) for x in cfg["evaluation"]["ks"] if int(x) <= k), cut, k})
    common: dict[str, Any] = {
        "item_popularity": data.item_popularity,
        "num_items": data.num_items - FIRST_INDEX,
    }
    retrieval_metrics = evaluate_ranking(candidates, truth, ks, **common)
    reranked_metrics = evaluate_ranking(reranked, truth, ks, **common)
    return TwoStageResult(
        users=users,
        timestamps=times,
        candidates=candidates,
        reranked=reranked,
        ranker_scores=ranker_scores,
        retrieval_metrics=retrieval_metrics,
        reranked_metrics=reranked_metrics,
        retrieval_ndcg_at_10=headline(retrieval_metrics, NDCG, cut),
        reranked_ndcg_at_10=headline(reranked_metrics, NDCG, cut),
        candidate_recall=headline(retrieval_metrics, RECALL, k),
    )


def two_stage_metrics(result: TwoStageResult) -> dict[str, float]:
    """The stage's key numbers (MLflow keys): both orders' NDCG@10 and recall@10 (@K when the lists are
    shorter) and the candidates' recall (ceiling)."""
    cut = min(HEADLINE_K, result.candidates.shape[1])
    return {
        "two_stage/retrieval_ndcg_at_10": result.retrieval_ndcg_at_10,
        "two_stage/reranked_ndcg_at_10": result.reranked_ndcg_at_10,
        "two_stage/candidate_recall": result.candidate_recall,
        "two_stage/retrieval_recall_at_10": headline(result.retrieval_metrics, RECALL, cut),
        "two_stage/reranked_recall_at_10": headline(result.reranked_metrics, RECALL, cut),
    }


def publish_two_stage(folder: Path, result: TwoStageResult, model: str, retriever: str, run_id: str) -> Path:
    import pyarrow.parquet as pq

    table = pd.concat(
        [
            result.retrieval_metrics.assign(order="retrieval"),
            result.reranked_metrics.assign(order="reranked"),
        ],
        ignore_index=True,
    )
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    with publish_atomically(folder) as staging:
        (staging / METRICS_OUTPUT).mkdir()
        pq.write_table(arrow, staging / METRICS_OUTPUT / "part-0.parquet")
        schema = [{"name": f.name, "type": str(f.type)} for f in arrow.schema]
        extra = {"model": model, "retriever": retriever, "run_id": run_id, **two_stage_metrics(result)}
        write_manifest(
            staging / METRICS_OUTPUT,
            Manifest(
                METRICS_OUTPUT, arrow.num_rows, schema, {"users": len(result.users)}, "", "", extra=extra
            ),
        )
        write_manifest(
            staging, Manifest(RERANK, arrow.num_rows, [], {"users": len(result.users)}, "", "", extra=extra)
        )
    return folder
