"""``bench retrieval``: every ``conf/index/*.yaml`` index against exact (Flat) inner-product search.

Workload: seeded clustered unit vectors (items and queries drawn the same way), one batched search of all
queries per index. Reported per index: build seconds, queries per second, recall@k against the exact top-k
(``|approx ∩ exact| / k`` averaged over queries) and the QPS ratio against the exact index measured in the
same run. The exact reference is the ``flat`` config itself, so it is built and timed like the others.

Shapes: N items, D dimension, C clusters, Q queries, K neighbours.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from omegaconf import OmegaConf

from recsys.config import conf_dir, typed
from recsys.console import step
from recsys.errors import ConfigError
from recsys.retrieval.index import IndexConfig, ItemIndex

EXACT_INDEX = "flat"


@dataclass(frozen=True)
class _Measured:
    name: str
    factory: str
    build_seconds: float
    search_seconds: float
    recall: float


def clustered_vectors(rng: np.random.Generator, centres: np.ndarray, count: int, spread: float) -> np.ndarray:
    """Unit vectors drawn around random centres: ``normalise(centre[c] + spread / sqrt(D) * N(0, I))``.

    Args:
        rng: the seeded generator (draws the cluster of each row, then the noise).
        centres: ``[C, D]`` float32 unit cluster centres (see :func:`unit_centres`).
        count: rows to draw (N or Q).
        spread: expected norm of the offset relative to the unit centre.

    Returns:
        ``[count, D]`` float32 rows of norm 1.
    """
    dim = centres.shape[1]
    vectors = centres[rng.integers(0, len(centres), size=count)]
    vectors += rng.standard_normal((count, dim), dtype=np.float32) * np.float32(spread / np.sqrt(dim))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def unit_centres(rng: np.random.Generator, num_clusters: int, dim: int) -> np.ndarray:
    """``[C, D]`` float32 centres drawn uniformly on the unit sphere."""
    centres = rng.standard_normal((num_clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return centres


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of ``|approx_q ∩ exact_q| / k``; both ``[Q, K]`` ids, -1 (missing) never matches."""
    k = exact.shape[1]
    hits = 0
    for found, truth in zip(approx, exact, strict=True):
        hits += len(np.intersect1d(found[found >= 0], truth[truth >= 0], assume_unique=True))
    return float(hits / (k * len(exact)))


def index_configs() -> list[IndexConfig]:
    """Every ``conf/index/*.yaml``, the exact reference first, then by file name."""
    folder = conf_dir() / "index"
    configs = []
    for path in sorted(folder.glob("*.yaml")):
        mapping = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
        if not isinstance(mapping, dict):
            raise ConfigError(f"{path}: expected a mapping of index settings.")
        configs.append(typed(IndexConfig, mapping, "index"))
    if not any(c.name == EXACT_INDEX for c in configs):
        raise ConfigError(
            f"{folder}: no {EXACT_INDEX}.yaml (`factory: Flat`), the exact reference is missing."
        )
    return sorted(configs, key=lambda c: (c.name != EXACT_INDEX, c.name))


def run_retrieval_bench(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Build and search every configured index on seeded clustered data; compare with exact search.

    Args:
        cfg: the composed, plain config; reads ``seed`` and ``bench.retrieval`` (``num_items``, ``dim``,
            ``num_clusters``, ``num_queries``, ``k``).

    Returns:
        ``{"params": {...}, "timings": [{"engine", "step", "seconds", "ratio"}, ...], "indexes": [{"name",
        "factory", "build_seconds", "qps", "recall_at_k", "speedup_vs_exact"}, ...]}``; ``ratio`` of a search
        step is its QPS over the exact QPS, of a build step its seconds over the exact build's.
    """
    bench = cfg["bench"]
    seed = int(cfg["seed"])
    num_items, dim, k = int(bench["num_items"]), int(bench["dim"]), int(bench["k"])
    num_queries, num_clusters = int(bench["num_queries"]), int(bench["num_clusters"])
    spread = float(bench["cluster_spread"])
    threads = os.cpu_count() or 1
    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(seed)
    with step(f"generate {num_items:,} x {dim} clustered item vectors and {num_queries:,} queries"):
        centres = unit_centres(rng, num_clusters, dim)
        items = clustered_vectors(rng, centres, num_items, spread)
        queries = clustered_vectors(rng, centres, num_queries, spread)
        item_ids = np.arange(num_items, dtype=np.int64)

    measured: list[_Measured] = []
    exact: np.ndarray | None = None
    for index_cfg in index_configs():
        with step(f"{index_cfg.name} ({index_cfg.factory}): build"):
            start = time.perf_counter()
            index = ItemIndex.build(items, item_ids, index_cfg, model_version="bench", seed=seed)
            build_seconds = time.perf_counter() - start
        with step(f"{index_cfg.name}: search {num_queries:,} queries, k={k}"):
            start = time.perf_counter()
            found, _ = index.search(queries, k)
            search_seconds = time.perf_counter() - start
        if exact is None:
            exact = found
        recall = recall_at_k(found, exact)
        measured.append(_Measured(index_cfg.name, index.meta.factory, build_seconds, search_seconds, recall))
        del index
    reference = measured[0]
    timings: list[dict[str, Any]] = []
    indexes: list[dict[str, Any]] = []
    for m in measured:
        speedup = round(reference.search_seconds / m.search_seconds, 2)
        build_ratio = round(m.build_seconds / reference.build_seconds, 2)
        timings.append(
            {"engine": "faiss", "step": f"{m.name} build", "seconds": m.build_seconds, "ratio": build_ratio}
        )
        timings.append(
            {"engine": "faiss", "step": f"{m.name} search", "seconds": m.search_seconds, "ratio": speedup}
        )
        indexes.append(
            {
                "name": m.name,
                "factory": m.factory,
                "build_seconds": round(m.build_seconds, 3),
                "qps": round(num_queries / m.search_seconds, 1),
                "recall_at_k": round(m.recall, 4),
                "speedup_vs_exact": speedup,
            }
        )
    return {
        "params": {
            "num_items": num_items,
            "dim": dim,
            "num_clusters": num_clusters,
            "cluster_spread": spread,
            "num_queries": num_queries,
            "k": k,
            "seed": seed,
            "threads": threads,
            "gpus": faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0,
        },
        "timings": timings,
        "indexes": indexes,
    }
