"""Batch candidate generation: top-K items per user from an :class:`ItemIndex`, minus what the user has seen.

Output (one Parquet file plus ``manifest.json``, published atomically):

=============  ===================  ===========================================================
column         type                 meaning
=============  ===================  ===========================================================
user_id        string or int64      the caller's user id (raw string id or integer index)
item_ids       list<int64>          up to K unseen item ids, best first
scores         list<float32>        inner product of each item with the user vector
model          string               model name the vectors came from
model_version  string               version of that model (also the manifest's source fingerprint)
=============  ===================  ===========================================================

Shapes: U users, D vector dimension, B users per batch, F items fetched per user in a batch, K kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.progress import Progress
from scipy import sparse

from recsys.console import console
from recsys.errors import InputError
from recsys.manifest import Manifest, config_hash, publish_atomically, write_manifest
from recsys.retrieval.index import ItemIndex, check_vectors
from recsys.schema import spark_type_name

CANDIDATES = "candidates"
DATA_FILE = "part-00000.parquet"
USER_ID = "user_id"
ITEM_IDS = "item_ids"
SCORES = "scores"
MODEL = "model"
MODEL_VERSION = "model_version"

# Per-user seen item ids: a list of int arrays, or a scipy CSR matrix (column j = item id j).
Seen: TypeAlias = "list[np.ndarray] | sparse.csr_matrix"


def candidates_schema(user_id_type: pa.DataType) -> pa.Schema:
    """Arrow schema of the candidates table; ``user_id_type`` is ``pa.string()`` or ``pa.int64()``."""
    return pa.schema(
        [
            pa.field(USER_ID, user_id_type, nullable=False),
            pa.field(ITEM_IDS, pa.list_(pa.int64()), nullable=False),
            pa.field(SCORES, pa.list_(pa.float32()), nullable=False),
            pa.field(MODEL, pa.string(), nullable=False),
            pa.field(MODEL_VERSION, pa.string(), nullable=False),
        ]
    )


def generate_candidates(
    index: ItemIndex,
    user_vectors: np.ndarray,
    user_ids: np.ndarray,
    seen: Seen,
    k: int,
    out_folder: Path,
    batch_size: int = 4096,
    model: str = "",
    model_version: str = "",
) -> int:
    """Write the top-``k`` unseen items of every user to ``out_folder`` (Parquet + manifest, atomic).

    Per batch of B users the index is asked for ``F = min(k + s, N)`` items, where ``s`` is the largest
    number of (indexed) seen items of a user in the batch; seen items are dropped and the best ``k`` of the
    rest are kept. A user therefore gets exactly ``k`` items whenever the index returns ``F`` results and
    ``N - seen >= k``; fewer otherwise (approximate indexes may return fewer than F, marked -1 by FAISS).

    Args:
        index: the item index (its ids are the ids written to ``item_ids``).
        user_vectors: ``[U, D]`` float32 user vectors, D = ``index.dim``.
        user_ids: ``[U]`` user ids, strings (``dtype`` str/object) or integers, row-aligned with the vectors.
        seen: items to exclude per user, row-aligned: a list of U int arrays of item ids, or a ``[U, *]``
            CSR matrix whose column ``j`` is item id ``j``. Ids not in the index are ignored.
        k: items kept per user, >= 1.
        out_folder: final output folder; replaced as a whole on success, untouched on failure.
        batch_size: users searched at once (memory is about ``batch_size * F * 16`` bytes).
        model: model name written in the ``model`` column.
        model_version: written in ``model_version`` and as the manifest's ``source_fingerprint``.

    Returns:
        Rows written (= U, one row per user, possibly with fewer than ``k`` items).

    Raises:
        InputError: misaligned lengths, wrong dtypes or dimension, NaN vectors, k or batch_size < 1.
    """
    num_users = _check_inputs(index, user_vectors, user_ids, seen, k, batch_size)
    user_id_type = pa.int64() if np.issubdtype(user_ids.dtype, np.integer) else pa.string()
    schema = candidates_schema(user_id_type)
    sorted_positions = np.argsort(index.item_ids, kind="stable")
    sorted_ids = index.item_ids[sorted_positions]
    with publish_atomically(Path(out_folder)) as staging:
        with (
            pq.ParquetWriter(staging / DATA_FILE, schema) as writer,
            Progress(console=console, transient=True, disable=num_users <= batch_size) as progress,
        ):
            task = progress.add_task("candidates", total=num_users)
            for start in range(0, num_users, batch_size):
                stop = min(start + batch_size, num_users)
                seen_rows, seen_positions = _seen_positions(seen, start, stop, sorted_ids, sorted_positions)
                item_ids, scores, offsets = top_k_unseen(
                    index, user_vectors[start:stop], seen_rows, seen_positions, k
                )
                rows = stop - start
                batch = pa.record_batch(
                    [
                        pa.array(_as_column(user_ids[start:stop]), type=user_id_type),
                        pa.ListArray.from_arrays(
                            pa.array(offsets, pa.int32()), pa.array(item_ids, pa.int64())
                        ),
                        pa.ListArray.from_arrays(
                            pa.array(offsets, pa.int32()), pa.array(scores, pa.float32())
                        ),
                        pa.array([model] * rows, pa.string()),
                        pa.array([model_version] * rows, pa.string()),
                    ],
                    schema=schema,
                )
                writer.write_batch(batch)
                progress.advance(task, rows)
        write_manifest(
            staging,
            Manifest(
                name=CANDIDATES,
                row_count=num_users,
                schema=[{"name": f.name, "type": spark_type_name(f.type)} for f in schema],
                counts={"k": k, "users": num_users},
                config_hash=config_hash(
                    {key: v for key, v in index.meta.to_dict().items() if key != "created_at"}
                ),
                source_fingerprint=model_version,
                extra={"index": index.meta.to_dict(), "model": model},
            ),
        )
    return num_users


def top_k_unseen(
    index: ItemIndex, vectors: np.ndarray, seen_rows: np.ndarray, seen_positions: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best ``k`` unseen items for one batch of B users, flattened row by row.

    Args:
        index: the item index.
        vectors: ``[B, D]`` float32 user vectors.
        seen_rows: ``[S]`` int64 batch row (0..B-1) of each seen pair.
        seen_positions: ``[S]`` int64 index position of each seen pair's item.
        k: items kept per user.

    Returns:
        ``item_ids`` ``[T]`` int64 and ``scores`` ``[T]`` float32, best first within each user, and
        ``offsets`` ``[B + 1]`` int64 so that user ``b`` owns ``[offsets[b], offsets[b + 1])``.
    """
    rows = len(vectors)
    max_seen = int(np.bincount(seen_rows, minlength=rows).max()) if len(seen_rows) else 0
    fetch = min(k + max_seen, len(index))
    positions, scores = index.search_positions(vectors, fetch)
    keep = positions >= 0
    if len(seen_rows):
        # One int64 key per (row, position) pair makes the exclusion a single vectorised isin.
        keys = np.arange(rows, dtype=np.int64)[:, None] * len(index) + positions
        keep &= ~np.isin(keys, seen_rows * len(index) + seen_positions)
    keep &= np.cumsum(keep, axis=1) <= k
    offsets = np.zeros(rows + 1, dtype=np.int64)
    np.cumsum(keep.sum(axis=1), out=offsets[1:])
    return index.item_ids[positions[keep]], scores[keep].astype(np.float32, copy=False), offsets


def _seen_positions(
    seen: Seen, start: int, stop: int, sorted_ids: np.ndarray, sorted_positions: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Seen pairs of rows ``start:stop`` as (batch row, index position), dropping ids not in the index."""
    if isinstance(seen, list | tuple):
        chunk = [np.asarray(s, dtype=np.int64).ravel() for s in seen[start:stop]]
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), [len(c) for c in chunk])
        ids = np.concatenate(chunk) if chunk else np.empty(0, dtype=np.int64)
    else:
        block = sparse.csr_matrix(seen[start:stop])
        rows = np.repeat(np.arange(stop - start, dtype=np.int64), np.diff(block.indptr))
        ids = block.indices.astype(np.int64)
    where = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    known = sorted_ids[where] == ids
    return rows[known], sorted_positions[where[known]]


def _check_inputs(
    index: ItemIndex, user_vectors: np.ndarray, user_ids: np.ndarray, seen: Seen, k: int, batch_size: int
) -> int:
    check_vectors("user_vectors", user_vectors, index.dim)
    num_users = len(user_vectors)
    if not isinstance(user_ids, np.ndarray) or user_ids.shape != (num_users,):
        raise InputError(
            f"user_ids must be a numpy array of shape ({num_users},) aligned with user_vectors, "
            f"got shape {getattr(user_ids, 'shape', None)} (e.g. np.asarray(['u1', 'u2']))."
        )
    if not (np.issubdtype(user_ids.dtype, np.integer) or user_ids.dtype.kind in "UO"):
        raise InputError(f"user_ids must hold strings or integers, got dtype {user_ids.dtype}.")
    if isinstance(seen, list | tuple):
        seen_rows = len(seen)
    elif sparse.issparse(seen) and seen.ndim == 2:
        seen_rows = seen.shape[0]
    else:
        raise InputError(
            f"seen must be a list of item id arrays or a scipy CSR matrix, got {type(seen).__name__}."
        )
    if seen_rows != num_users:
        raise InputError(
            f"seen must have one entry per user ({num_users}, row-aligned with user_vectors), got "
            f"{seen_rows}; pass [np.array([], dtype=np.int64)] * U when nothing is seen."
        )
    for name, value in (("k", k), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r} (e.g. {name}=100).")
    return num_users


def _as_column(values: np.ndarray) -> list[Any] | np.ndarray:
    return values.astype(np.int64) if np.issubdtype(values.dtype, np.integer) else [str(v) for v in values]
