"""Candidate lists: what a two-stage ranker is trained on and evaluated with.

Shapes: U lists (one per user and target split), K candidates per list, N items, Q = U x K rows.

A list is built for a user at a point in time ``t`` (the user's earliest event of the target split): the
retriever scores the whole catalog from the user's history of the splits *before* the target split (train
for ``valid``, train + valid for ``test``; the offline protocol's histories), the history items and the
reserved indices are masked, and the top K are kept, best first. Every candidate becomes one ranker row with
features a ranker would have, all computed from events strictly before ``t``:

- the retriever's score, its z-score among the user's unmasked items and its rank in the list;
- the z-score of each ``candidates.score_features`` model (e.g. EASE beside a SASRec retriever);
- item popularity (events before ``t``, and in the 1 / 7 / 30 days before ``t``) and item age (days since the
  item's first event); user activity and CTRs (``point_in_time_features``); the recent-items bag, the
  categories and the user attributes as sparse ids (the DLRM's tables).

The label is 1 when the candidate is one of the user's target-split items (implicit engagement: rated =
engaged, whatever the rating). The retriever is fitted on train only and the ranker's training lists are the
``valid`` lists, so no list is built from a model that saw its own target: a held-out share of the valid users
(``candidates.holdout_fraction``) validates the ranker (early stopping), and the ``test`` lists evaluate it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from models.dlrm.config import DLRMConfig
from models.dlrm.rerank import candidate_rows, event_labels
from recsys.console import step
from recsys.manifest import Manifest, publish_atomically, read_manifest, write_manifest
from recsys.offline import RESERVED_ITEMS
from recsys.paths import RunPaths
from recsys.schema import ITEM_ID, ITEM_IDX, LABEL, SPLIT, SPLITS, TIMESTAMP, USER_IDX, spark_type_name
from recsys.scoring import load_retriever_scorer
from recsys.stage import SequenceScorer
from recsys.tables import read_arrow

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]

RETRIEVER_SCORE = "retriever_score"
RETRIEVER_Z = "retriever_z"
RETRIEVER_RANK = "retriever_rank"
ITEM_AGE_DAYS = "item_age_days"
SECONDS_PER_DAY = 86_400
POPULARITY_WINDOWS_DAYS = (1, 7, 30)
"""``item_count_<d>d``: the item's events in the ``d`` days before the list's time (trends, not totals)."""
RANKER_SPLITS = ("train", "valid", "test")
LIST_ROW_GROUP_LISTS = 64
"""Lists per Parquet row group: row groups hold whole lists, so shuffling row groups keeps lists intact."""
SCORE_BATCH = 256
"""Histories scored per retriever call: ``[SCORE_BATCH, N]`` float32 scores in memory at once."""


def window_column(days: int) -> str:
    return f"item_count_{days}d"


def score_feature_column(model: str) -> str:
    return f"score_{model}_z"


@dataclass(frozen=True)
class Queries:
    """Who gets a list, when, from which history, and what the truth is.

    Attributes:
        users: ``[U]`` user indices.
        times: ``[U]`` the list's time (the user's earliest target-split event).
        histories: ``U`` item-index arrays of the earlier splits' events, oldest first.
        truth: ``U`` sets of the user's target-split items.
    """

    users: IntArray
    times: IntArray
    histories: list[IntArray]
    truth: list[set[int]]


def split_queries(events: pd.DataFrame, split: str) -> Queries:
    """One query per user with an event in ``split``; history = the user's events of the splits before it,
    in time order (ties by raw item id)."""
    position = SPLITS.index(split)
    earlier = events[events[SPLIT].isin(SPLITS[:position])]
    tie = ITEM_ID if ITEM_ID in events else ITEM_IDX
    earlier = earlier.sort_values([USER_IDX, TIMESTAMP, tie], kind="stable")
    history_of = earlier.groupby(USER_IDX)[ITEM_IDX].apply(lambda s: s.to_numpy(dtype=np.int64))
    target = events[events[SPLIT] == split]
    grouped = target.groupby(USER_IDX)
    users = np.sort(target[USER_IDX].unique()).astype(np.int64)
    times = grouped[TIMESTAMP].min().reindex(users).to_numpy(dtype=np.int64)
    truth_of = grouped[ITEM_IDX].apply(lambda s: {int(i) for i in s})
    empty = np.zeros(0, dtype=np.int64)
    histories = [history_of.get(u, empty) for u in users]
    return Queries(users, times, histories, [truth_of[u] for u in users])


@dataclass(frozen=True)
class Retrieved:
    """Top-K candidates of each query: ``items [U, K]`` (-1 padding), ``scores`` and ``z`` (the score's
    z-score among the user's unmasked items) ``[U, K]`` float32, best first."""

    items: IntArray
    scores: FloatArray
    z: FloatArray


def _masked(scores: FloatArray, histories: Sequence[IntArray]) -> FloatArray:
    out = np.array(scores, dtype=np.float32, copy=True)
    out[:, RESERVED_ITEMS[out.shape[1] > RESERVED_ITEMS]] = -np.inf
    for row, items in enumerate(histories):
        out[row, items] = -np.inf
    return out


def _row_moments(masked: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """``(values, mean, std)``: the scores with masked (-inf) entries as 0, and each row's ``[U, 1]`` mean
    and standard deviation over its unmasked entries (what the z-score features are relative to)."""
    finite = np.isfinite(masked)
    values = np.where(finite, masked, 0.0)
    counts = np.maximum(finite.sum(axis=1, keepdims=True), 1)
    mean = values.sum(axis=1, keepdims=True) / counts
    std = np.sqrt(np.where(finite, (values - mean) ** 2, 0.0).sum(axis=1, keepdims=True) / counts)
    return values, mean, std


def retrieve(scorer: SequenceScorer, histories: Sequence[IntArray], k: int) -> Retrieved:
    """The ``k`` best unseen, non-reserved items of every history (ties: lower item index first)."""
    items, scores, zs = [], [], []
    for start in range(0, len(histories), SCORE_BATCH):
        batch = list(histories[start : start + SCORE_BATCH])
        masked = _masked(np.asarray(scorer.score(batch), dtype=np.float32), batch)
        _, mean, std = _row_moments(masked)
        keep = min(k, masked.shape[1])
        # stable sort of (-score, item) gives ties by ascending item index
        order = np.argsort(-masked, axis=1, kind="stable")[:, :keep]
        top = np.take_along_axis(masked, order, axis=1)
        top_items = np.where(np.isfinite(top), order, -1)
        items.append(top_items)
        scores.append(np.where(np.isfinite(top), top, 0.0))
        zs.append(np.where(np.isfinite(top), (top - mean) / np.maximum(std, 1e-6), 0.0))
    if not items:
        empty = np.zeros((0, k), dtype=np.float32)
        return Retrieved(np.zeros((0, k), dtype=np.int64), empty, empty)
    return Retrieved(
        np.concatenate(items).astype(np.int64),
        np.concatenate(scores).astype(np.float32),
        np.concatenate(zs).astype(np.float32),
    )


def score_z(scorer: SequenceScorer, histories: Sequence[IntArray], items: IntArray) -> FloatArray:
    """``[U, K]`` z-scores of ``items`` under another model (0 on padding), for ``score_features``."""
    out = np.zeros(items.shape, dtype=np.float32)
    for start in range(0, len(histories), SCORE_BATCH):
        batch = list(histories[start : start + SCORE_BATCH])
        masked = _masked(np.asarray(scorer.score(batch), dtype=np.float32), batch)
        values, mean, std = _row_moments(masked)
        block = items[start : start + len(batch)]
        picked = np.take_along_axis(values, np.maximum(block, 0), axis=1)
        out[start : start + len(batch)] = np.where(block >= 0, (picked - mean) / np.maximum(std, 1e-6), 0.0)
    return out


def _windowed_counts(events: pd.DataFrame, items: IntArray, times: IntArray) -> dict[str, IntArray]:
    """Per row: the item's events in each window strictly before ``time``, and its age in days at ``time``
    (since its first event; 0 for an item never seen before)."""
    ev_items = events[ITEM_IDX].to_numpy(dtype=np.int64)
    ev_times = events[TIMESTAMP].to_numpy(dtype=np.int64)
    order = np.lexsort((ev_times, ev_items))
    sorted_items, sorted_times = ev_items[order], ev_times[order]
    starts = np.searchsorted(sorted_items, items, side="left")
    ends = np.searchsorted(sorted_items, items, side="right")
    out: dict[str, IntArray] = {}

    def before(limit: IntArray) -> IntArray:
        # events of the row's item with time < limit: binary search inside the item's block
        found = np.empty(items.size, dtype=np.int64)
        for value in np.unique(items):
            rows = np.flatnonzero(items == value)
            lo, hi = int(starts[rows[0]]), int(ends[rows[0]])
            found[rows] = lo + np.searchsorted(sorted_times[lo:hi], limit[rows], side="left")
        return found

    now = before(times)
    for days in POPULARITY_WINDOWS_DAYS:
        out[window_column(days)] = now - before(times - days * SECONDS_PER_DAY)
    first = np.where(ends > starts, sorted_times[np.minimum(starts, sorted_times.size - 1)], times)
    out[ITEM_AGE_DAYS] = np.maximum(times - first, 0) // SECONDS_PER_DAY
    return out


def relevant_events(
    event_users: IntArray, event_items: IntArray, users: IntArray, candidates: IntArray
) -> npt.NDArray[np.bool_]:
    """``[E]`` mask of the events :func:`list_rows` reads for these lists: those of the lists' users or of
    their candidate items (``-1`` padding ignored). Every ranker feature is a statistic of one user's or one
    item's events, so rows built from the masked events equal rows built from all of them."""
    items = np.unique(candidates[candidates >= 0])
    return np.asarray(np.isin(event_users, users) | np.isin(event_items, items))


def list_rows(
    features: Path,
    model_cfg: DLRMConfig,
    events: pd.DataFrame,
    queries: Queries,
    retrieved: Retrieved,
    extra_scores: Mapping[str, FloatArray],
    recent_items: int,
) -> tuple[pa.Table, npt.NDArray[np.bool_]]:
    """Ranker rows of every real candidate, list by list in retrieval order, and the ``[U, K]`` mask of real
    candidates (the rows are ``retrieved.items[mask]`` in row-major order)."""
    rows, valid = candidate_rows(
        features, model_cfg, events, queries.users, queries.times, retrieved.items, recent_items
    )
    items = retrieved.items[valid]
    times = np.repeat(queries.times, valid.sum(axis=1))
    labels = np.array(
        [
            int(item) in truth
            for truth, row in zip(queries.truth, retrieved.items, strict=True)
            for item in row
            if item >= 0
        ],
        dtype=np.int64,
    )
    ranks = np.broadcast_to(np.arange(retrieved.items.shape[1], dtype=np.int64), retrieved.items.shape)
    rows = rows.set_column(rows.schema.get_field_index(LABEL), LABEL, pa.array(labels))
    columns: dict[str, Any] = {
        RETRIEVER_SCORE: retrieved.scores[valid].astype(np.float64),
        RETRIEVER_Z: retrieved.z[valid].astype(np.float64),
        RETRIEVER_RANK: ranks[valid],
    }
    for model, z in extra_scores.items():
        columns[score_feature_column(model)] = z[valid].astype(np.float64)
    columns.update(_windowed_counts(events, items, times))
    for name, values in columns.items():
        rows = rows.append_column(name, pa.array(values))
    return rows, valid


@dataclass(frozen=True)
class CandidateSet:
    """One target split's lists: the queries, the candidates and their ranker rows."""

    queries: Queries
    retrieved: Retrieved
    rows: pa.Table
    valid: npt.NDArray[np.bool_]


def labelled_events(features: Path, rating_threshold: float) -> pd.DataFrame:
    """The ``split`` events with 0/1 labels resolved as the CTR samples resolve them."""
    events: pd.DataFrame = read_arrow(features / "split").to_pandas()
    events[LABEL] = event_labels(events, rating_threshold)
    return events


def build_candidate_set(
    cfg: Mapping[str, Any], model_cfg: DLRMConfig, events: pd.DataFrame, split: str
) -> CandidateSet:
    """The lists of ``split`` from the ranker's retriever, with its score features (see module docstring)."""
    spec = model_cfg.candidates
    if spec is None:
        raise ValueError(f"model={model_cfg.name} has no `candidates` section (task={model_cfg.task}).")
    paths = RunPaths.from_cfg(cfg)
    queries = split_queries(events, split)
    scorer = load_retriever_scorer(paths, spec.retriever)
    with step(f"{spec.retriever}: top {spec.k} candidates for {len(queries.users):,} {split} users"):
        retrieved = retrieve(scorer, queries.histories, spec.k)
    extra = {}
    for model in spec.score_features:
        other = load_retriever_scorer(paths, model)
        with step(f"{model}: scores of the {split} candidates"):
            extra[model] = score_z(other, queries.histories, retrieved.items)
    recent = int(cfg["features"]["ctr"]["recent_items"])
    with step(f"features of {int((retrieved.items >= 0).sum()):,} {split} candidate rows"):
        rows, valid = list_rows(paths.features, model_cfg, events, queries, retrieved, extra, recent)
    return CandidateSet(queries, retrieved, rows, valid)


def holdout_users(users: IntArray, fraction: float, seed: int) -> npt.NDArray[np.bool_]:
    """``[U]`` True for the users whose valid lists validate the ranker (a seeded draw, stable per user)."""
    rng = np.random.default_rng(seed)
    draws = rng.random(int(users.max(initial=0)) + 1)
    return np.asarray(draws[users] < fraction)


def write_ranker_dataset(cfg: Mapping[str, Any], model_cfg: DLRMConfig, folder: Path) -> Path:
    """Build and publish the ranker's lists under ``folder`` (``split=train|valid|test`` partitions, whole
    lists per row group, a manifest with the table sizes of the features' ``ctr`` manifest).

    ``train``: full valid lists of the non-held-out users that contain a positive (a list without one
    teaches a listwise loss nothing); ``valid``: the held-out users' valid lists, all of them; ``test``:
    every test list.
    """
    spec = model_cfg.candidates
    assert spec is not None
    paths = RunPaths.from_cfg(cfg)
    events = labelled_events(paths.features, float(cfg["features"]["ctr"]["rating_threshold"]))
    valid_set = build_candidate_set(cfg, model_cfg, events, "valid")
    test_set = build_candidate_set(cfg, model_cfg, events, "test")
    held_out = holdout_users(valid_set.queries.users, spec.holdout_fraction, int(cfg["seed"]))
    has_positive = np.array(
        [
            bool(t & set(r.tolist()))
            for t, r in zip(valid_set.queries.truth, valid_set.retrieved.items, strict=True)
        ]
    )
    # a listwise batch holds whole lists of exactly k rows: shorter lists (a catalog nearly all seen) only
    # validate and test
    full = valid_set.valid.sum(axis=1) == spec.k
    parts = {
        "train": _list_subset(valid_set, ~held_out & has_positive & full),
        "valid": _list_subset(valid_set, held_out),
        "test": test_set.rows,
    }
    counts = dict(read_manifest(paths.features / "ctr").counts)
    with publish_atomically(folder) as staging:
        for split, table in parts.items():
            (staging / f"{SPLIT}={split}").mkdir()
            pq.write_table(
                table,
                staging / f"{SPLIT}={split}" / "part-0.parquet",
                row_group_size=LIST_ROW_GROUP_LISTS * spec.k,
            )
            counts[f"{split}_lists"] = table.num_rows // spec.k
            counts[f"{split}_rows"] = table.num_rows
        schema_table = parts["test"]
        schema = [{"name": f.name, "type": spark_type_name(f.type)} for f in schema_table.schema]
        schema.append({"name": SPLIT, "type": "string"})
        recall = candidate_recall(test_set)
        write_manifest(
            staging,
            Manifest(
                "candidates",
                sum(t.num_rows for t in parts.values()),
                schema,
                counts,
                config_hash="",
                source_fingerprint=read_manifest(paths.features / "split").source_fingerprint,
                extra={"retriever": spec.retriever, "k": spec.k, "test_candidate_recall": recall},
            ),
        )
    return folder


def _list_subset(candidates: CandidateSet, keep: npt.NDArray[np.bool_]) -> pa.Table:
    """The rows of the lists ``keep`` selects (lists are contiguous runs of their real candidates)."""
    per_list = candidates.valid.sum(axis=1)
    row_keep = np.repeat(keep, per_list)
    return candidates.rows.filter(pa.array(row_keep))


def candidate_recall(candidates: CandidateSet) -> float:
    """Mean over users of the share of their truth items among the candidates: the ceiling of re-ranking."""
    shares = [
        len(truth & set(row.tolist())) / len(truth)
        for truth, row in zip(candidates.queries.truth, candidates.retrieved.items, strict=True)
        if truth
    ]
    return float(np.mean(shares)) if shares else float("nan")
