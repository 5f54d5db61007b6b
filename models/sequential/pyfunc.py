"""MLflow pyfunc of a sequential retriever: raw item-id history in, top-K raw item ids + scores out.

It runs the model's own user encoder over the (ordered) history and searches a FAISS ``ItemIndex`` built
over the model's item vectors, so ``mlflow models serve`` answers with the scores offline evaluation used.
The same class is registered as ``<prefix>-sequential`` by ``recsys train`` (index of the configured type,
built at training time) and as ``<prefix>-retriever`` by ``recsys index`` (the index that command built;
``recsys.jobs.run_index`` calls :func:`log_retriever_for_index` through the evaluation manifest's
``retriever_logger`` hook).

Artifacts: ``config`` (model settings JSON), ``state`` (``torch.save`` state dict), ``items`` (``.npy`` raw
item id per item index), ``index`` (``ItemIndex`` folder), ``popularity`` (``.npy`` event counts per item
index: the fallback for a history with no known item, flagged in the ``fallback`` column).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.sequential.config import SequentialConfig
from models.sequential.network import MolarNet, SASRec, build_network
from recsys.config import as_dict, typed
from recsys.retrieval.index import ItemIndex
from recsys.schema import FIRST_INDEX, PADDING_INDEX
from recsys.tracking.models import ModelInfo, PythonModel, log_pyfunc
from recsys.tracking.requests import (
    HISTORY,
    POPULARITY_ARTIFACT,
    PopularItems,
    request_histories,
    request_k,
    save_popularity,
    search_answer,
)

ARTIFACT_CONFIG = "config"
ARTIFACT_STATE = "state"
ARTIFACT_ITEMS = "items"
ARTIFACT_INDEX = "index"
MODEL_DIR = "model"
CONFIG_FILE = "model_config.json"
STATE_FILE = "state_dict.pt"
# Third-party modules the retriever imports when it loads and predicts (its pinned requirements).
SERVING_MODULES = ("torch", "faiss")


def config_to_mapping(cfg: SequentialConfig) -> dict[str, Any]:
    """The yaml-shaped mapping (plain containers) ``typed(SequentialConfig, ..., "model")`` reads back."""
    return as_dict(cfg)


def save_model(network: SASRec | MolarNet, cfg: SequentialConfig, folder: Path) -> Path:
    """Write ``model_config.json`` + ``state_dict.pt`` (content vectors included for Molar) to ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config_to_mapping(cfg), indent=2, sort_keys=True))
    torch.save(network.state_dict(), folder / STATE_FILE)
    return folder


def load_network(config_path: Path, state_path: Path) -> tuple[SequentialConfig, SASRec | MolarNet]:
    """Rebuild the network written by :func:`save_model` (sizes read from the weights)."""
    cfg = typed(SequentialConfig, json.loads(config_path.read_text()), "model")
    state = torch.load(state_path, map_location="cpu", weights_only=True)
    content = None
    if cfg.architecture == "molar":
        content = (state["content"].numpy(), state["has_content"].numpy().reshape(-1) > 0)
    network = build_network(cfg, int(state["items.weight"].shape[0]), content)
    network.load_state_dict(state)
    network.eval()
    return cfg, network


class SequentialRetriever(PythonModel):
    """``predict(DataFrame{history: [raw item ids, oldest first]}) -> DataFrame{item_ids, scores, fallback}``.

    Unknown item ids are dropped from a history; the newest ``max_len`` known items form the query; items
    already in the history are never returned; a history with no known item gets the most popular items
    (``fallback`` true). ``params={"k": ...}`` overrides the list length.
    """

    def __init__(self, k: int) -> None:
        self.k = k

    def load_context(self, context: Any) -> None:
        self.cfg, self.network = load_network(
            Path(context.artifacts[ARTIFACT_CONFIG]), Path(context.artifacts[ARTIFACT_STATE])
        )
        self.index = ItemIndex.load(Path(context.artifacts[ARTIFACT_INDEX]))
        self.item_ids = np.load(context.artifacts[ARTIFACT_ITEMS], allow_pickle=False)
        self.position = {str(item): i for i, item in enumerate(self.item_ids) if i >= FIRST_INDEX}
        self.popular = PopularItems.load(context.artifacts[POPULARITY_ARTIFACT], self.item_ids)

    def _histories(self, rows: list[list[str]]) -> tuple[np.ndarray, list[set[int]]]:
        known = [[self.position[h] for h in row if h in self.position] for row in rows]
        length = self.cfg.max_len
        out = np.full((len(rows), length), PADDING_INDEX, dtype=np.int64)
        for r, items in enumerate(known):
            tail = items[-length:]
            if tail:
                out[r, length - len(tail) :] = tail
        return out, [set(items) for items in known]

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        rows = request_histories(model_input)
        k = request_k(params, self.k)
        histories, seen = self._histories(rows)
        with torch.no_grad():
            queries = self.network.user_vectors(torch.from_numpy(histories)).float().numpy()
        fetch = min(k + max((len(s) for s in seen), default=0), len(self.index))
        found, scores = self.index.search(np.ascontiguousarray(queries), max(fetch, 1))
        return search_answer(found, scores, seen, k, self.item_ids, self.popular)


def log_sequential(
    model_dir: Path,
    index_dir: Path,
    item_ids: np.ndarray,
    popularity: np.ndarray,
    k: int,
    example_history: list[str],
    name: str,
) -> ModelInfo:
    """Log the pyfunc (artifacts copied into MLflow) into the active run and return its info.

    Args:
        model_dir: folder written by :func:`save_model`.
        index_dir: a saved ``ItemIndex`` over the model's item vectors.
        item_ids: ``[N]`` raw item id per item index.
        popularity: ``[N]`` event counts per item index (the fallback's order).
        k: default list length.
        example_history: raw item ids for the input example / signature.
        name: artifact path of the model in the run (``sequential`` or ``retriever``).
    """
    with tempfile.TemporaryDirectory() as tmp:
        items_path = Path(tmp) / "items.npy"
        np.save(items_path, np.asarray(item_ids).astype(str))
        artifacts = {
            ARTIFACT_CONFIG: str(model_dir / CONFIG_FILE),
            ARTIFACT_STATE: str(model_dir / STATE_FILE),
            ARTIFACT_ITEMS: str(items_path),
            ARTIFACT_INDEX: str(index_dir),
            POPULARITY_ARTIFACT: str(save_popularity(popularity, Path(tmp) / "popularity.npy")),
        }
        example = pd.DataFrame({HISTORY: [example_history]})
        return log_pyfunc(
            name,
            lambda: SequentialRetriever(k),
            artifacts,
            example,
            requires=SERVING_MODULES,
            params={"k": k},
        )


def log_retriever_for_index(
    evaluated: Path,
    index_dir: Path,
    item_ids: np.ndarray,
    popularity: np.ndarray,
    k: int,
    example_history: list[str],
) -> ModelInfo:
    """``recsys index`` hook: the retriever pyfunc of a published sequential evaluation folder."""
    return log_sequential(
        evaluated / MODEL_DIR, index_dir, item_ids, popularity, k, example_history, "retriever"
    )


class SequenceModelScorer:
    """A published SASRec / Molar as a :class:`recsys.stage.SequenceScorer`: the network encodes the newest
    ``max_len`` items of each history, scored against the published item vectors (the space the FAISS index
    serves), so candidates equal those of an exact (flat) index."""

    def __init__(self, folder: Path, batch_size: int = 256) -> None:
        self.cfg, self.network = load_network(
            folder / MODEL_DIR / CONFIG_FILE, folder / MODEL_DIR / STATE_FILE
        )
        self.item_vectors = np.load(folder / "item_vectors.npy").astype(np.float32)
        self.batch_size = batch_size

    def _padded(self, histories: list[np.ndarray]) -> np.ndarray:
        length = self.cfg.max_len
        out = np.full((len(histories), length), PADDING_INDEX, dtype=np.int64)
        for row, items in enumerate(histories):
            tail = np.asarray(items, dtype=np.int64)[-length:]
            if tail.size:
                out[row, length - tail.size :] = tail
        return out

    def score(self, histories: Any) -> np.ndarray:
        rows = list(histories)
        parts = [np.zeros((0, self.item_vectors.shape[0]), dtype=np.float32)]
        with torch.no_grad():
            for start in range(0, len(rows), self.batch_size):
                padded = torch.from_numpy(self._padded(rows[start : start + self.batch_size]))
                users = self.network.user_vectors(padded).float().numpy()
                parts.append(users @ self.item_vectors.T)
        return np.concatenate(parts)


class SequenceScorerSource:
    """The sequential family's :class:`recsys.stage.ScorerSource` (the folder ``recsys train`` publishes)."""

    def load(self, folder: Path, features: Path) -> SequenceModelScorer:
        return SequenceModelScorer(folder)
