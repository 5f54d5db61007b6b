"""The retriever pyfunc: raw item-id history in, top-K raw item ids and scores out.

It wraps a history encoder (a fold-in matrix ``[N, D]``: the user vector is the sum of the rows of the
history items) and a FAISS :class:`~recsys.retrieval.index.ItemIndex` over item vectors in the same space,
so ``mlflow models serve`` answers requests with the same scores offline evaluation used. A history with no
known item gets the popularity fallback (:mod:`recsys.tracking.requests`), flagged in ``fallback``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.offline import read_published_vectors
from recsys.paths import RunPaths
from recsys.retrieval.index import ItemIndex
from recsys.schema import FIRST_INDEX
from recsys.stage import PublishedVectors
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


class RetrieverModel(PythonModel):
    """Artifacts: ``index`` (ItemIndex folder), ``encoder`` (``.npy`` fold-in matrix), ``items``
    (``.npy`` of raw item ids where position = item index), ``popularity`` (``.npy`` event counts per item
    index: the fallback)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def load_context(self, context: Any) -> None:
        self.index = ItemIndex.load(Path(context.artifacts["index"]))
        self.encoder = np.load(context.artifacts["encoder"])
        self.item_ids = np.load(context.artifacts["items"], allow_pickle=False)
        self.position = {str(item): i for i, item in enumerate(self.item_ids) if i >= FIRST_INDEX}
        self.popular = PopularItems.load(context.artifacts[POPULARITY_ARTIFACT], self.item_ids)

    def _encode(self, history: list[str]) -> tuple[np.ndarray, set[int]]:
        known = {self.position[h] for h in history if h in self.position}
        vector = (
            self.encoder[sorted(known)].sum(axis=0) if known else np.zeros(self.encoder.shape[1], np.float32)
        )
        return vector.astype(np.float32), known

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        rows = request_histories(model_input)
        k = request_k(params, self.k)
        encoded = [self._encode(row) for row in rows]
        queries = (
            np.stack([v for v, _ in encoded]) if encoded else np.zeros((0, self.encoder.shape[1]), np.float32)
        )
        fetch = min(k + max((len(s) for _, s in encoded), default=0), len(self.item_ids))
        found, scores = self.index.search(queries, fetch)
        return search_answer(found, scores, [seen for _, seen in encoded], k, self.item_ids, self.popular)


def log_retriever(
    index_folder: Path,
    encoder: np.ndarray,
    item_ids: np.ndarray,
    popularity: np.ndarray,
    k: int,
    example_history: list[str],
    work: Path,
) -> ModelInfo:
    """Log the pyfunc into the active run (artifacts copied into MLflow) and return its info."""
    work.mkdir(parents=True, exist_ok=True)
    np.save(work / "encoder.npy", encoder.astype(np.float32))
    np.save(work / "items.npy", item_ids.astype(str))
    artifacts = {
        "index": str(index_folder),
        "encoder": str(work / "encoder.npy"),
        "items": str(work / "items.npy"),
        POPULARITY_ARTIFACT: str(save_popularity(popularity, work / "popularity.npy")),
    }
    example = pd.DataFrame({HISTORY: [example_history]})
    return log_pyfunc(
        "retriever", lambda: RetrieverModel(k), artifacts, example, requires=("faiss",), params={"k": k}
    )


class FoldInRetriever:
    """The :class:`recsys.stage.Retriever` of history-based vector models (PureSVD): their published
    ``evaluate/<model>`` vectors; a request's user vector is its history folded in."""

    def published(self, paths: RunPaths, model: str) -> PublishedVectors:
        return read_published_vectors(paths.evaluate(model))

    def log_pyfunc(
        self,
        vectors: PublishedVectors,
        index_dir: Path,
        item_ids: np.ndarray,
        popularity: np.ndarray,
        k: int,
        example: list[str],
    ) -> ModelInfo:
        with tempfile.TemporaryDirectory() as tmp:
            return log_retriever(index_dir, vectors.item_vectors, item_ids, popularity, k, example, Path(tmp))
