"""Baselines that run beside every model: MostPop, ItemKNN, EASE, and PureSVD (a vector retriever).

All of them score from a user's *history row* (a sparse 0/1 vector over item indices), not from a user id,
so the same code serves offline evaluation (history = train, or train + valid for the test split) and
online requests (history sent by the caller). Shapes: B users in a batch, N item indices (including the
reserved padding/OOV indices, which never get interactions), D latent dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from recsys.config import typed
from recsys.errors import ConfigError
from recsys.settings import EASEConfig, ItemKNNConfig, MostPopConfig, PureSVDConfig


class HistoryScorer(Protocol):
    """What the evaluator and the pyfuncs call: fit on a train matrix, score history rows."""

    name: str

    def fit(self, train: sp.csr_matrix) -> None: ...

    def score(self, histories: sp.csr_matrix) -> np.ndarray:
        """Scores ``[B, N]`` float32 for history rows ``[B, N]``."""
        ...


def binarize(matrix: sp.csr_matrix) -> sp.csr_matrix:
    out = matrix.tocsr(copy=True)
    out.data = np.ones_like(out.data, dtype=np.float32)
    return out


@dataclass
class MostPop:
    """Every user gets the items with the most train interactions."""

    name: str = "mostpop"

    def fit(self, train: sp.csr_matrix) -> None:
        self.popularity = np.asarray(binarize(train).sum(axis=0), dtype=np.float32).ravel()

    def score(self, histories: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.popularity, (histories.shape[0], self.popularity.shape[0])).copy()


@dataclass
class ItemKNN:
    """Item-based collaborative filtering (Sarwar et al. 2001, Deshpande & Karypis 2004).

    Cosine similarity between item columns with a shrinkage term, ``sim(i, j) = |U_i ∩ U_j| /
    (||i|| ||j|| + shrink)``, pruned to the ``neighbors`` most similar items per item; a user's score for j is
    the sum of similarities between j and the items in the history.

    The co-occurrence matrix is computed ``block_items`` target columns at a time and pruned before the next
    block: unpruned, its non-zeros grow with the sum of squared user history lengths (gigabytes once heavy
    users meet a catalog of 10^5 items), pruned it holds at most ``neighbors`` per item.
    """

    neighbors: int = 100
    shrink: float = 10.0
    block_items: int = 2048
    name: str = "itemknn"

    def fit(self, train: sp.csr_matrix) -> None:
        if self.block_items < 1:
            raise ConfigError(f"model.params.block_items must be >= 1; got {self.block_items}.")
        x = binarize(train).tocsc()
        norms = np.sqrt(np.asarray(x.power(2).sum(axis=0)).ravel())
        by_item = x.T.tocsr()
        num_items = x.shape[1]
        blocks = [
            self._pruned_block(by_item, x[:, start : min(num_items, start + self.block_items)], start, norms)
            for start in range(0, num_items, self.block_items)
        ]
        if not blocks:  # no items at all
            self.similarity = sp.csr_matrix((num_items, num_items), dtype=np.float32)
            return
        self.similarity = sp.hstack(blocks, format="csr", dtype=np.float32)

    def _pruned_block(
        self, by_item: sp.csr_matrix, targets: sp.csc_matrix, start: int, norms: np.ndarray
    ) -> sp.csr_matrix:
        """Similarities of every item to the target columns ``start ..``, top ``neighbors`` per column."""
        co = (by_item @ targets).tocoo()
        keep = co.row != co.col + start  # an item is not its own neighbour
        rows, cols = co.row[keep], co.col[keep]
        denom = norms[rows] * norms[cols + start] + self.shrink
        sim = sp.csr_matrix(
            ((co.data[keep] / denom).astype(np.float32), (rows, cols)), shape=co.shape, dtype=np.float32
        )
        sim.eliminate_zeros()
        return _top_per_column(sim, self.neighbors)

    def score(self, histories: sp.csr_matrix) -> np.ndarray:
        return np.asarray((binarize(histories) @ self.similarity).todense(), dtype=np.float32)


def _top_per_column(sim: sp.csr_matrix, keep: int) -> sp.csr_matrix:
    """Keep, for every target item (column), its ``keep`` largest similarities."""
    csc = sim.tocsc()
    rows, cols, vals = [], [], []
    for j in range(csc.shape[1]):
        start, end = csc.indptr[j], csc.indptr[j + 1]
        if start == end:
            continue
        data = csc.data[start:end]
        idx = csc.indices[start:end]
        if end - start > keep:
            top = np.argpartition(-data, keep - 1)[:keep]
            data, idx = data[top], idx[top]
        rows.append(idx)
        cols.append(np.full(idx.shape[0], j))
        vals.append(data)
    if not rows:
        return sp.csr_matrix(sim.shape, dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=sim.shape,
        dtype=np.float32,
    )


@dataclass
class EASE:
    """Embarrassingly Shallow Autoencoder (Steck 2019): ``B = I - P / diag(P)``, ``P = (XᵀX + λI)⁻¹``.

    Closed form over a dense ``[N, N]`` matrix, so the catalog is capped by ``max_items``.
    """

    l2: float = 500.0
    max_items: int = 20000
    name: str = "ease"

    def fit(self, train: sp.csr_matrix) -> None:
        n = train.shape[1]
        if n > self.max_items:
            raise ConfigError(
                f"EASE needs a dense {n}x{n} matrix; the catalog ({n} items) exceeds model.max_items="
                f"{self.max_items}. Raise it if memory allows ({n * n * 8 / 2**30:.1f} GiB) or use itemknn."
            )
        x = binarize(train)
        gram = np.asarray((x.T @ x).todense(), dtype=np.float64)
        gram[np.diag_indices(n)] += self.l2
        precision = np.linalg.inv(gram)
        weights = -precision / np.diag(precision)[None, :]
        weights[np.diag_indices(n)] = 0.0
        self.weights = weights.astype(np.float32)

    def score(self, histories: sp.csr_matrix) -> np.ndarray:
        return np.asarray(binarize(histories) @ self.weights, dtype=np.float32)


@dataclass
class PureSVD:
    """PureSVD (Cremonesi et al. 2010): truncated SVD of the train matrix, ``X ≈ U Σ Vᵀ``.

    Item vectors are the rows of ``V`` ``[N, D]``; a user vector is the fold-in ``x_u V`` ``[D]``, so the
    score ``x_u V Vᵀ`` is an inner product and a FAISS index over ``V`` serves it exactly.
    """

    dim: int = 64
    seed: int = 0
    name: str = "puresvd"

    def fit(self, train: sp.csr_matrix) -> None:
        x = binarize(train).astype(np.float64)
        k = min(self.dim, min(x.shape) - 1)
        rng = np.random.default_rng(self.seed)
        v0 = rng.standard_normal(min(x.shape))
        _, _, vt = svds(x, k=k, v0=v0)
        self.item_factors = np.ascontiguousarray(vt.T[:, ::-1], dtype=np.float32)

    def user_vectors(self, histories: sp.csr_matrix) -> np.ndarray:
        return np.asarray(binarize(histories) @ self.item_factors, dtype=np.float32)

    def item_vectors(self) -> np.ndarray:
        return self.item_factors

    def score(self, histories: sp.csr_matrix) -> np.ndarray:
        return self.user_vectors(histories) @ self.item_factors.T


def build_baseline(model_cfg: Mapping[str, Any], seed: int) -> HistoryScorer:
    """The estimator of a composed ``model`` group with ``family: baseline``, its ``params`` checked against
    the baseline's schema (``recsys.settings.BASELINE_SCHEMAS``); ``seed`` seeds PureSVD's solver."""
    name = str(model_cfg.get("name"))
    if name == "mostpop":
        typed(MostPopConfig, model_cfg, "model")
        return MostPop()
    if name == "itemknn":
        knn = typed(ItemKNNConfig, model_cfg, "model").params
        return ItemKNN(neighbors=knn.neighbors, shrink=knn.shrink, block_items=knn.block_items)
    if name == "ease":
        ease = typed(EASEConfig, model_cfg, "model").params
        return EASE(l2=ease.l2, max_items=ease.max_items)
    if name == "puresvd":
        return PureSVD(dim=typed(PureSVDConfig, model_cfg, "model").params.dim, seed=seed)
    raise ConfigError(f"model={name!r} is not a baseline; choose mostpop, itemknn, ease or puresvd.")
