"""FAISS item index: build from item vectors, search by inner product, save beside its id map, load back.

The index type is a FAISS ``index_factory`` string from ``conf/index/*.yaml``; this module only adds what the
pipeline needs around it: the map from FAISS positions to item ids, the model version the vectors came from,
input checks with readable errors, and one optional move to the GPU.

Shapes: N items, D vector dimension, Q queries, K neighbours per query.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

from recsys.console import console
from recsys.errors import ConfigError, InputError
from recsys.manifest import publish_atomically
from recsys.settings import INNER_PRODUCT
from recsys.settings import IndexConfig as IndexConfig  # re-exported: importers keep this module's name

INDEX_FILE = "index.faiss"
ITEM_IDS_FILE = "item_ids.npy"
META_FILE = "meta.json"
INDEX_FILES = (INDEX_FILE, ITEM_IDS_FILE, META_FILE)

_METRICS = {INNER_PRODUCT: faiss.METRIC_INNER_PRODUCT}
# Id returned where an index has fewer than K results for a query (FAISS's own convention).
MISSING_ID = -1
_IVF_LISTS = re.compile(r"IVF(\d+)")

UseGpu = Literal["auto"] | bool


@dataclass(frozen=True)
class IndexMeta:
    """What ``meta.json`` records about a built index (``factory`` is the one actually built)."""

    name: str
    factory: str
    metric: str
    dim: int
    count: int
    model_version: str
    created_at: str
    nprobe: int | None = None
    ef_search: int | None = None
    ef_construction: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ItemIndex:
    """A FAISS index over item vectors together with the item id of every FAISS position.

    Build with :meth:`build` or :meth:`load`; the constructor takes already-built parts.

    Example::

        index = ItemIndex.build(item_vectors, item_ids, typed(IndexConfig, cfg["index"], "index"), "v3")
        ids, scores = index.search(user_vectors, k=100)
        index.save(Path("runs/2024-01-01/index/sasrec"))
    """

    def __init__(
        self, cpu_index: Any, item_ids: np.ndarray, meta: IndexMeta, use_gpu: UseGpu = "auto"
    ) -> None:
        """Wrap already-built parts (use :meth:`build` or :meth:`load` instead of calling this directly).

        Args:
            cpu_index: a trained and filled FAISS CPU index with ``ntotal == len(item_ids)``.
            item_ids: ``[N]`` int64; the item id of FAISS position ``i`` is ``item_ids[i]``.
            meta: description written to ``meta.json``; its search knobs are applied to the index.
            use_gpu: see :class:`IndexConfig`; the searched copy moves to the GPU(s) in one step.
        """
        _set_search_params(cpu_index, meta)
        self._cpu_index = cpu_index
        self._search_index = _to_device(cpu_index, use_gpu, meta.factory)
        self._item_ids = item_ids
        self.meta = meta

    @property
    def item_ids(self) -> np.ndarray:
        """``[N]`` int64 item id of each FAISS position."""
        return self._item_ids

    @property
    def dim(self) -> int:
        return self.meta.dim

    def __len__(self) -> int:
        return self.meta.count

    @classmethod
    def build(
        cls,
        vectors: np.ndarray,
        item_ids: np.ndarray,
        cfg: IndexConfig,
        model_version: str,
        *,
        seed: int = 0,
    ) -> ItemIndex:
        """Train (IVF/PQ) and fill the index described by ``cfg``.

        Args:
            vectors: ``[N, D]`` float32 item vectors, finite, N >= 1.
            item_ids: ``[N]`` int64 unique item ids, row-aligned with ``vectors``.
            cfg: the index choice, see :class:`IndexConfig`.
            model_version: version of the model the vectors came from; saved in ``meta.json``.
            seed: seeds the choice of the training subset (``cfg.train_sample``).

        Returns:
            The filled index; on a GPU when ``cfg.use_gpu`` says so.

        Raises:
            InputError: wrong dtype, shape, NaN/inf values or duplicate ids.
            ConfigError: the factory string is invalid for this dimension or catalog size.
        """
        check_vectors("item vectors", vectors)
        count, dim = vectors.shape
        _check_item_ids(item_ids, count)
        factory = effective_factory(cfg.factory, count, cfg.min_points_per_list)
        try:
            cpu_index = faiss.index_factory(dim, factory, _METRICS[cfg.metric])
        except RuntimeError as exc:
            raise ConfigError(
                f"conf/index/{cfg.name}.yaml: FAISS cannot build factory {factory!r} for dimension {dim} "
                f"(e.g. PQm needs D divisible by m): {_first_line(exc)}"
            ) from exc
        meta = IndexMeta(
            name=cfg.name,
            factory=factory,
            metric=cfg.metric,
            dim=dim,
            count=count,
            model_version=model_version,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            nprobe=cfg.nprobe,
            ef_search=cfg.ef_search,
            ef_construction=cfg.ef_construction,
        )
        _set_search_params(cpu_index, meta)  # fails on knobs the factory lacks before the slow part
        if cfg.ef_construction is not None:
            _hnsw(cpu_index, cfg.name).efConstruction = cfg.ef_construction
        if not cpu_index.is_trained:
            sample = vectors
            if cfg.train_sample is not None and count > cfg.train_sample:
                rows = np.random.default_rng(seed).choice(count, size=cfg.train_sample, replace=False)
                sample = vectors[np.sort(rows)]
            try:
                cpu_index.train(sample)
            except RuntimeError as exc:
                raise ConfigError(
                    f"conf/index/{cfg.name}.yaml: training {factory!r} on {len(sample)} vectors failed "
                    f"(too few vectors for the codebook?): {_first_line(exc)}"
                ) from exc
        cpu_index.add(vectors)
        return cls(cpu_index, item_ids.copy(), meta, cfg.use_gpu)

    def search_positions(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, but returns FAISS positions (``[Q, K]`` int64, -1 where missing)."""
        check_vectors("queries", queries, self.dim)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r} (e.g. k=100).")
        scores, positions = self._search_index.search(np.ascontiguousarray(queries), int(k))
        scores = scores.astype(np.float32, copy=False)
        scores[positions < 0] = -np.inf
        return positions.astype(np.int64, copy=False), scores

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product for each query.

        Args:
            queries: ``[Q, D]`` float32, finite.
            k: neighbours per query, >= 1; may exceed N (the tail is then missing).

        Returns:
            ``item_ids`` ``[Q, K]`` int64, best first, ``-1`` where the index has fewer than K results, and
            ``scores`` ``[Q, K]`` float32 inner products (``-inf`` where the id is -1).

        Raises:
            InputError: wrong dtype, shape, dimension or NaN/inf values, or k < 1.
        """
        positions, scores = self.search_positions(queries, k)
        ids = np.where(positions >= 0, self._item_ids[np.maximum(positions, 0)], MISSING_ID)
        return ids.astype(np.int64, copy=False), scores

    def save(self, folder: Path) -> Path:
        """Write ``index.faiss`` (CPU copy), ``item_ids.npy`` and ``meta.json``; atomic (staging + rename).

        Returns:
            The resolved ``folder``.
        """
        folder = Path(folder)
        with publish_atomically(folder) as staging:
            faiss.write_index(self._cpu_index, str(staging / INDEX_FILE))
            np.save(staging / ITEM_IDS_FILE, self._item_ids, allow_pickle=False)
            (staging / META_FILE).write_text(json.dumps(self.meta.to_dict(), indent=2, sort_keys=True) + "\n")
        return folder.resolve()

    @classmethod
    def load(cls, folder: Path, cfg: IndexConfig | None = None, dim: int | None = None) -> ItemIndex:
        """Read an index written by :meth:`save`.

        Args:
            folder: the saved index folder.
            cfg: when given, its search knobs (``nprobe``, ``ef_search``) and ``use_gpu`` replace the saved
                ones; the factory must be the one saved.
            dim: when given, the dimension the caller's query vectors have.

        Raises:
            InputError: a file is missing or unreadable, the files disagree with each other, or the index
                dimension is not ``dim``; the message names the folder.
        """
        folder = Path(folder)
        missing = [name for name in INDEX_FILES if not (folder / name).is_file()]
        if missing:
            raise InputError(
                f"{folder}: not a saved item index, missing {missing}; expected {list(INDEX_FILES)} "
                "written by ItemIndex.save (e.g. runs/<date>/index/<model>/)."
            )
        try:
            raw = json.loads((folder / META_FILE).read_text())
            meta = IndexMeta(**raw)
        except (json.JSONDecodeError, TypeError) as exc:
            raise InputError(f"{folder / META_FILE}: unreadable index metadata ({exc}).") from exc
        cpu_index = faiss.read_index(str(folder / INDEX_FILE))
        item_ids = np.load(folder / ITEM_IDS_FILE, allow_pickle=False)
        if cpu_index.d != meta.dim:
            raise InputError(
                f"{folder}: {INDEX_FILE} has dimension {cpu_index.d} but {META_FILE} says {meta.dim}."
            )
        if dim is not None and dim != meta.dim:
            raise InputError(
                f"{folder}: index dimension is {meta.dim} but the query vectors have dimension {dim}; "
                f"was it built from another model (model_version {meta.model_version!r})?"
            )
        if not cpu_index.ntotal == len(item_ids) == meta.count or item_ids.dtype != np.int64:
            raise InputError(
                f"{folder}: {INDEX_FILE} holds {cpu_index.ntotal} vectors, {ITEM_IDS_FILE} {len(item_ids)} "
                f"{item_ids.dtype} ids, {META_FILE} says count={meta.count} (must agree, ids int64)."
            )
        use_gpu: UseGpu = "auto"
        if cfg is not None:
            if effective_factory(cfg.factory, meta.count, cfg.min_points_per_list) != meta.factory:
                raise ConfigError(
                    f"{folder}: saved index is {meta.factory!r} but conf/index/{cfg.name}.yaml says "
                    f"{cfg.factory!r}; rebuild the index or pick the matching index config."
                )
            meta = IndexMeta(**{**meta.to_dict(), "nprobe": cfg.nprobe, "ef_search": cfg.ef_search})
            use_gpu = cfg.use_gpu
        return cls(cpu_index, item_ids, meta, use_gpu)


def effective_factory(factory: str, count: int, min_points_per_list: int) -> str:
    """``factory`` with its IVF list count lowered to at most ``count // min_points_per_list`` (>= 1).

    Example: ``effective_factory("IVF1024,Flat", 5000, 39) == "IVF128,Flat"``.
    """
    cap = max(1, count // min_points_per_list)
    return _IVF_LISTS.sub(lambda m: f"IVF{min(int(m.group(1)), cap)}", factory, count=1)


def check_vectors(what: str, vectors: np.ndarray, dim: int | None = None) -> None:
    """Raise :class:`InputError` unless ``vectors`` is a non-empty finite ``[rows, dim]`` float32 array."""
    if not isinstance(vectors, np.ndarray) or vectors.dtype != np.float32 or vectors.ndim != 2:
        found = f"{type(vectors).__name__} {getattr(vectors, 'dtype', '')} {getattr(vectors, 'shape', '')}"
        raise InputError(
            f"{what} must be a 2-D float32 numpy array [rows, D]; found {found.strip()} "
            "(e.g. np.asarray(vectors, dtype=np.float32))."
        )
    if vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise InputError(f"{what} is empty (shape {vectors.shape}); need at least one row of D >= 1.")
    if dim is not None and vectors.shape[1] != dim:
        raise InputError(f"{what} have dimension {vectors.shape[1]}, the index has dimension {dim}.")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise InputError(f"{what}: {len(bad)} row(s) contain NaN or inf, e.g. row {int(bad[0])}.")


def _check_item_ids(item_ids: np.ndarray, count: int) -> None:
    if not isinstance(item_ids, np.ndarray) or item_ids.dtype != np.int64 or item_ids.shape != (count,):
        found = f"{getattr(item_ids, 'dtype', type(item_ids).__name__)} {getattr(item_ids, 'shape', '')}"
        raise InputError(
            f"item_ids must be an int64 numpy array of shape ({count},) aligned with the vectors; "
            f"found {found} (e.g. np.arange({count}, dtype=np.int64))."
        )
    unique, counts = np.unique(item_ids, return_counts=True)
    if len(unique) != count:
        raise InputError(
            f"item_ids must be unique; e.g. {int(unique[counts > 1][0])} appears more than once."
        )


def _hnsw(index: Any, name: str) -> Any:
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is None:
        raise ConfigError(f"conf/index/{name}.yaml: ef_search/ef_construction apply only to HNSW factories.")
    return hnsw


def _set_search_params(index: Any, meta: IndexMeta) -> None:
    if meta.nprobe is not None:
        try:
            faiss.extract_index_ivf(index).nprobe = meta.nprobe
        except RuntimeError as exc:
            raise ConfigError(
                f"conf/index/{meta.name}.yaml: nprobe applies only to IVF factories, not {meta.factory!r} "
                '(e.g. `factory: "IVF1024,Flat"`).'
            ) from exc
    if meta.ef_search is not None:
        _hnsw(index, meta.name).efSearch = meta.ef_search


def _to_device(cpu_index: Any, use_gpu: UseGpu, factory: str) -> Any:
    """The index searches run on: ``cpu_index`` itself, or its copy on all visible GPUs (one step)."""
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if use_gpu is False or (use_gpu == "auto" and gpus == 0):
        return cpu_index
    if gpus == 0:
        raise ConfigError("use_gpu: true but FAISS sees no GPU; set `use_gpu: auto` or install faiss-gpu.")
    try:
        return faiss.index_cpu_to_all_gpus(cpu_index)
    except RuntimeError as exc:
        if use_gpu is True:
            raise ConfigError(f"FAISS cannot move {factory!r} to the GPU: {_first_line(exc)}") from exc
        console.print(f"[yellow]{factory} has no GPU implementation; searching on the CPU.[/yellow]")
        return cpu_index


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__
