"""The served two-stage recommender, ``<prefix>-recommender``: raw item-id history in, top-K raw item ids out.

One request row is a user's history (raw item ids, oldest first) and, when known, the raw user id. The row
goes through what the ``rerank`` stage evaluated: the retriever's top ``candidates.k`` unseen items, the
ranker's rows for them at the snapshot's end (point-in-time statistics over the snapshot's events plus the
request's history), the ranker's order, the first K kept. A row the models cannot personalise (no known
item in the history and no known user) gets the snapshot's most popular items instead, and its
``fallback`` field says so: never arbitrary items with score 0.

Artifacts: the retriever and score-feature scorers (pickled :class:`recsys.stage.SequenceScorer` objects),
the published ranker's three files, the snapshot's events and id vocabularies (``snapshot.npz``) and the
features' ``content`` / ``users`` tables the ranker's sparse features are looked up in.
"""

from __future__ import annotations

import pickle
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.dlrm.candidates import Queries, list_rows, relevant_events, retrieve, score_z
from models.dlrm.config import DLRMConfig
from models.dlrm.pyfunc import ARTIFACT_CONFIG, ARTIFACT_COUNTS, ARTIFACT_STATE, SERVING_MODULES, DLRMScorer
from models.dlrm.rerank import rerank, scatter_scores, score_rows
from recsys.manifest import read_manifest
from recsys.paths import RunPaths
from recsys.schema import FIRST_INDEX, ITEM_ID, ITEM_IDX, LABEL, TIMESTAMP, USER_ID, USER_IDX
from recsys.scoring import load_retriever_scorer
from recsys.tables import read_arrow
from recsys.tracking.models import ModelInfo, PythonModel, load_from_artifacts, log_pyfunc
from recsys.tracking.requests import (
    FALLBACK,
    HISTORY,
    ITEM_IDS,
    SCORES,
    PopularItems,
    request_histories,
    request_k,
    request_user_ids,
)

MODEL_NAME = "recommender"
SNAPSHOT = "snapshot"
RETRIEVER = "retriever"
SCORE_FEATURES = "score_features"
FEATURES = "features"
LOOKUP_TABLES = ("content", "users")
IMPLICIT_POSITIVE = 1
"""A served history has no ratings: its events count as engaged (the label ``event_labels`` gives them)."""


class TwoStageRecommender(PythonModel):
    """``predict(DataFrame{history: [raw item ids], user_id?}) -> DataFrame{item_ids, scores, fallback}``.

    ``params={"k": ...}`` sets the list length (at most ``candidates.k``).
    """

    def __init__(self, k: int) -> None:
        self.k = k

    def load_context(self, context: Any) -> None:
        artifacts = context.artifacts
        ranker = load_from_artifacts(
            DLRMScorer(),
            {name: artifacts[name] for name in (ARTIFACT_CONFIG, ARTIFACT_COUNTS, ARTIFACT_STATE)},
        )
        assert isinstance(ranker, DLRMScorer)
        self.ranker = ranker.scorer
        self.cfg: DLRMConfig = ranker.config
        with open(artifacts[RETRIEVER], "rb") as handle:
            self.retriever = pickle.load(handle)
        with open(artifacts[SCORE_FEATURES], "rb") as handle:
            self.score_features: dict[str, Any] = pickle.load(handle)
        snapshot = np.load(artifacts[SNAPSHOT], allow_pickle=False)
        self.events = pd.DataFrame(
            {
                USER_IDX: snapshot["user_idx"],
                ITEM_IDX: snapshot["item_idx"],
                TIMESTAMP: snapshot["timestamp"],
                LABEL: snapshot["label"],
            }
        )
        self.event_users = self.events[USER_IDX].to_numpy(dtype=np.int64)
        self.event_items = self.events[ITEM_IDX].to_numpy(dtype=np.int64)
        self.item_ids = snapshot["item_ids"].astype(str)
        self.user_ids = snapshot["user_ids"].astype(str)
        self.item_position = {item: i for i, item in enumerate(self.item_ids) if i >= FIRST_INDEX}
        self.user_position = {user: u for u, user in enumerate(self.user_ids) if u >= FIRST_INDEX}
        self.popular = PopularItems(snapshot["popularity"], self.item_ids)
        self.now = int(self.events[TIMESTAMP].max()) + 1
        # each known user's snapshot items in time order, looked up per request (not filtered per request)
        ordered = self.events.sort_values([USER_IDX, TIMESTAMP], kind="stable")
        users = ordered[USER_IDX].to_numpy(dtype=np.int64)
        firsts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if users.size else users
        items = np.split(ordered[ITEM_IDX].to_numpy(dtype=np.int64), firsts[1:])
        self.user_history: dict[int, np.ndarray] = dict(zip(users[firsts].tolist(), items, strict=True))
        self.fresh_user = int(self.events[USER_IDX].max()) + 1
        self.features = Path(artifacts[FEATURES])
        self.recent = int(snapshot["recent_items"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        histories = request_histories(model_input)
        k = request_k(params, self.k, self.retriever_k)
        users = request_user_ids(model_input)
        known = [[self.item_position[h] for h in row if h in self.item_position] for row in histories]
        user_idx = [self.user_position.get(u) if u is not None else None for u in users]
        out_ids: list[list[str]] = [[] for _ in histories]
        out_scores: list[list[float]] = [[] for _ in histories]
        fallback = [True] * len(histories)
        personal = [r for r in range(len(histories)) if known[r] or user_idx[r] is not None]
        if personal:
            self._two_stage(personal, known, user_idx, k, out_ids, out_scores, fallback)
        for r in range(len(histories)):
            if fallback[r]:
                out_ids[r], out_scores[r] = self.popular.top(set(known[r]), k)
        return pd.DataFrame({ITEM_IDS: out_ids, SCORES: out_scores, FALLBACK: fallback})

    @property
    def retriever_k(self) -> int:
        assert self.cfg.candidates is not None
        return self.cfg.candidates.k

    def _two_stage(
        self,
        rows: list[int],
        known: list[list[int]],
        user_idx: list[int | None],
        k: int,
        out_ids: list[list[str]],
        out_scores: list[list[float]],
        fallback: list[bool],
    ) -> None:
        """Retrieve, build the ranker rows at the snapshot's end, re-rank; fills the outputs of ``rows``."""
        query_users, histories, extra_events = [], [], []
        empty = np.zeros(0, dtype=np.int64)
        for offset, r in enumerate(rows):
            known_user = user_idx[r]
            user = known_user if known_user is not None else self.fresh_user + offset
            history = self.user_history.get(user, empty).tolist()
            recorded = set(history)
            new = [i for i in known[r] if i not in recorded]
            history += new
            # the request's items the snapshot has not seen for this user happened just before now
            extra_events += [
                (user, item, self.now - len(new) + j, IMPLICIT_POSITIVE) for j, item in enumerate(new)
            ]
            query_users.append(user)
            histories.append(np.asarray(history, dtype=np.int64))
        queries = Queries(
            np.asarray(query_users, dtype=np.int64),
            np.full(len(rows), self.now, dtype=np.int64),
            histories,
            [set() for _ in rows],
        )
        retrieved = retrieve(self.retriever, histories, self.retriever_k)
        extra = {name: score_z(s, histories, retrieved.items) for name, s in self.score_features.items()}
        # the rows depend on these events only: sort thousands per request, not the whole snapshot
        relevant = relevant_events(self.event_users, self.event_items, queries.users, retrieved.items)
        events = pd.concat(
            [
                self.events[relevant],
                pd.DataFrame(extra_events, columns=[USER_IDX, ITEM_IDX, TIMESTAMP, LABEL]),
            ],
            ignore_index=True,
        )
        table, valid = list_rows(self.features, self.cfg, events, queries, retrieved, extra, self.recent)
        flat = score_rows(self.ranker, table, self.features, self.cfg.batch_size)
        scores = scatter_scores(valid, flat)
        ordered = rerank(retrieved.items, scores)
        ranked_scores = -np.sort(-scores, axis=1)
        for offset, r in enumerate(rows):
            items = [int(i) for i in ordered[offset] if i >= 0][:k]
            if not items:
                continue
            out_ids[r] = [str(self.item_ids[i]) for i in items]
            out_scores[r] = [float(s) for s in ranked_scores[offset, : len(items)]]
            fallback[r] = False


def _snapshot_file(paths: RunPaths, rating_threshold: float, recent_items: int, folder: Path) -> Path:
    from models.dlrm.candidates import labelled_events

    events = labelled_events(paths.features, rating_threshold)
    items = read_arrow(paths.features / "vocab_item").to_pandas()
    users = read_arrow(paths.features / "vocab_user").to_pandas()
    num_items = int(read_manifest(paths.features / "split").counts["num_items"])
    num_users = int(read_manifest(paths.features / "split").counts["num_users"])
    item_ids = np.full(num_items, "", dtype=object)
    item_ids[items[ITEM_IDX].to_numpy()] = items[ITEM_ID].astype(str).to_numpy()
    user_ids = np.full(num_users, "", dtype=object)
    user_ids[users[USER_IDX].to_numpy()] = users[USER_ID].astype(str).to_numpy()
    popularity = np.bincount(events[ITEM_IDX].to_numpy(dtype=np.int64), minlength=num_items).astype(
        np.float64
    )
    path = folder / "snapshot.npz"
    np.savez(
        path,
        user_idx=events[USER_IDX].to_numpy(dtype=np.int64),
        item_idx=events[ITEM_IDX].to_numpy(dtype=np.int64),
        timestamp=events[TIMESTAMP].to_numpy(dtype=np.int64),
        label=events[LABEL].to_numpy(dtype=np.int64),
        item_ids=item_ids.astype(str),
        user_ids=user_ids.astype(str),
        popularity=popularity,
        recent_items=np.int64(recent_items),
    )
    return path


def log_recommender(cfg: Mapping[str, Any], ranker_folder: Path, model_cfg: DLRMConfig, k: int) -> ModelInfo:
    """Log the two-stage recommender pyfunc (``MODEL_NAME``) into the active run."""
    spec = model_cfg.candidates
    assert spec is not None
    paths = RunPaths.from_cfg(cfg)
    ctr = cfg["features"]["ctr"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        artifacts = {
            name: str(ranker_folder / file)
            for name, file in read_manifest(ranker_folder).extra["artifacts"].items()
        }
        with open(folder / "retriever.pkl", "wb") as handle:
            pickle.dump(load_retriever_scorer(paths, spec.retriever), handle)
        with open(folder / "score_features.pkl", "wb") as handle:
            pickle.dump({n: load_retriever_scorer(paths, n) for n in spec.score_features}, handle)
        (folder / FEATURES).mkdir()
        for table in LOOKUP_TABLES:
            if (paths.features / table).is_dir():
                shutil.copytree(paths.features / table, folder / FEATURES / table)
        snapshot = _snapshot_file(paths, float(ctr["rating_threshold"]), int(ctr["recent_items"]), folder)
        artifacts |= {
            RETRIEVER: str(folder / "retriever.pkl"),
            SCORE_FEATURES: str(folder / "score_features.pkl"),
            FEATURES: str(folder / FEATURES),
            SNAPSHOT: str(snapshot),
        }
        names = np.load(snapshot, allow_pickle=False)["item_ids"]
        users = np.load(snapshot, allow_pickle=False)["user_ids"]
        # two rows: with and without a user id, so the signature marks it optional
        example = pd.DataFrame(
            {
                HISTORY: [[str(i) for i in names[FIRST_INDEX : FIRST_INDEX + 3]], []],
                USER_ID: [str(users[FIRST_INDEX]), None],
            }
        )
        return log_pyfunc(
            MODEL_NAME,
            lambda: TwoStageRecommender(k),
            artifacts,
            example,
            requires=(*SERVING_MODULES, "faiss"),
            params={"k": k},
        )
