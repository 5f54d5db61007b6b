"""From the features stage's ``ctr`` output (Parquet + manifest) to :class:`CTRBatch` objects.

Shapes: B batch size, F_d dense features, F sparse features (KJT keys, ``DLRMConfig.sparse_features``).

Three layers, each usable alone:

- :class:`CTRBatchBuilder` turns an Arrow slice of ``B`` rows into one ``CTRBatch`` with vectorised
  numpy/pyarrow only (one ``KeyedJaggedTensor`` per batch, never per row).
- :class:`CTRIterableDataset` streams the Parquet files of one split and yields whole batches, so it is
  used with ``DataLoader(batch_size=None)`` (as torchrecipes' Criteo pipe does). It shuffles per epoch,
  and shards batches across distributed ranks and DataLoader workers.
- :class:`CTRDataModule` checks the manifest once and hands out the train / valid / test loaders.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from lightning.pytorch import LightningDataModule
from numpy.typing import NDArray
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.dlrm.batch import CTRBatch
from models.dlrm.config import DLRMConfig
from recsys.errors import InputError, ManifestError
from recsys.manifest import MANIFEST_FILE, Manifest, read_manifest
from recsys.schema import LABEL, OOV_INDEX, RATING, SPLIT, USER_IDX
from recsys.tables import parquet_files

TRAIN_SPLIT = "train"
VALID_SPLIT = "valid"
TEST_SPLIT = "test"
# Rows held (and shuffled) at once while streaming the training split, in units of batches. Rows only mix
# within this window (plus the row-group order, which is shuffled too), so it trades memory for randomness.
SHUFFLE_BUFFER_BATCHES = 16
# Manifest (Spark simple-string) types accepted for each role of a column.
_ID_TYPES = frozenset({"bigint", "int", "smallint", "tinyint"})
_ID_LIST_TYPES = frozenset(f"array<{t}>" for t in _ID_TYPES)
_NUMERIC_TYPES = _ID_TYPES | {"double", "float"}


def _combined(table: pa.Table | pa.RecordBatch, name: str) -> pa.Array:
    column = table.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


class CTRBatchBuilder:
    """Builds one :class:`CTRBatch` from ``B`` rows of the ctr output, column by column.

    - dense ``[B, F_d]`` float32: ``log1p(max(x, 0))`` for ``cfg.log1p_features``, then ``x`` for
      ``cfg.identity_features`` (the ``DLRMConfig.dense_features`` order); nulls (e.g. a CTR with no
      history) become 0 before the transform.
    - sparse: one KJT with the keys ``cfg.sparse_features`` in order. A scalar id column gives one id per
      row (a null id becomes ``OOV_INDEX``); a list column gives its list per row (an empty or null list
      gives an empty bag, a null element ``OOV_INDEX``). Lengths are int32, values int64.
    - hashing: for a table with ``max_rows``, an id ``>= max_rows`` becomes ``id % max_rows`` so it fits
      the ``min(vocabulary, max_rows)`` rows TorchRec allocates (collisions are accepted; hashed ids may
      share a row with padding or OOV).
    - labels ``[B]`` float32 in {0, 1}.
    - ratings ``[B]`` float32 (null -> NaN), only with ``with_ratings`` (training targets of the ordinal
      objective; scoring never needs them).

    Args:
        config: model config naming the columns.
        source: the folder the rows come from, named in error messages.
        with_ratings: also read the ``rating`` column into ``CTRBatch.ratings``.
    """

    def __init__(self, config: DLRMConfig, source: Path, *, with_ratings: bool = False) -> None:
        self.config = config
        self.source = source
        self.keys = list(config.sparse_features)
        self.max_rows: dict[str, int] = {
            feature: table.max_rows for table in config.tables if table.max_rows for feature in table.features
        }
        self.with_ratings = with_ratings
        targets = (LABEL, RATING) if with_ratings else (LABEL,)
        self.required = (*config.sparse_features, *config.dense_features, *targets)

    def __call__(self, rows: pa.Table | pa.RecordBatch) -> CTRBatch:
        """Build the batch of ``rows``.

        Args:
            rows: ``B`` rows of the ctr output with (at least) the configured columns.

        Returns:
            ``CTRBatch`` with dense ``[B, F_d]``, a KJT of ``F`` keys with ``B`` bags each, labels ``[B]``.

        Raises:
            ManifestError: a configured column is missing, has a non-id type, or a label is null.
        """
        self.check_columns(rows.schema.names)
        ratings = self._ratings(rows) if self.with_ratings else None
        groups = (
            torch.from_numpy(np.asarray(_combined(rows, USER_IDX).to_numpy(zero_copy_only=False), np.int64))
            if USER_IDX in rows.schema.names
            else None
        )
        return CTRBatch(self._dense(rows), self._sparse(rows), self._labels(rows), ratings, groups)

    def check_columns(self, available: list[str]) -> None:
        """Fail on the first configured column that is not in ``available``.

        Raises:
            ManifestError: naming the source folder, the column and the available columns.
        """
        for column in self.required:
            if column not in available:
                raise ManifestError(
                    f"{self.source}: column {column!r} named in the model config is missing; "
                    f"available columns: {sorted(available)}."
                )

    def _dense(self, rows: pa.Table | pa.RecordBatch) -> torch.Tensor:
        columns: list[NDArray[np.float64]] = []
        for name in self.config.dense_features:
            filled = pc.fill_null(_combined(rows, name).cast(pa.float64()), 0.0)
            values: NDArray[np.float64] = np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.float64)
            if name in self.config.log1p_features:
                values = np.log1p(np.clip(values, 0.0, None))
            columns.append(values)
        dense = np.stack(columns, axis=1) if columns else np.zeros((rows.num_rows, 0))
        return torch.from_numpy(dense.astype(np.float32))

    def _sparse(self, rows: pa.Table | pa.RecordBatch) -> KeyedJaggedTensor:
        lengths: list[NDArray[np.int32]] = []
        values: list[NDArray[np.int64]] = []
        for key in self.keys:
            column = _combined(rows, key)
            if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
                bag_lengths = pc.fill_null(pc.list_value_length(column), 0)
                lengths.append(np.asarray(bag_lengths.to_numpy(), dtype=np.int32))
                ids = column.flatten()
            elif pa.types.is_integer(column.type):
                lengths.append(np.ones(rows.num_rows, dtype=np.int32))
                ids = column
            else:
                raise ManifestError(
                    f"{self.source}: sparse feature {key!r} has type {column.type}; "
                    "expected integer ids or a list of integer ids."
                )
            key_values = np.asarray(pc.fill_null(ids, OOV_INDEX).to_numpy(), dtype=np.int64)
            max_rows = self.max_rows.get(key)
            if max_rows is not None:
                key_values = np.where(key_values >= max_rows, key_values % max_rows, key_values)
            values.append(key_values)
        return KeyedJaggedTensor.from_lengths_sync(
            keys=self.keys,
            values=torch.from_numpy(np.concatenate(values) if values else np.zeros(0, dtype=np.int64)),
            lengths=torch.from_numpy(np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int32)),
        )

    def _labels(self, rows: pa.Table | pa.RecordBatch) -> torch.Tensor:
        labels = _combined(rows, LABEL)
        if labels.null_count:
            raise ManifestError(f"{self.source}: column {LABEL!r} has {labels.null_count} null values.")
        return torch.from_numpy(np.array(labels.to_numpy(), dtype=np.float32))

    def _ratings(self, rows: pa.Table | pa.RecordBatch) -> torch.Tensor:
        return torch.from_numpy(_nan_filled(_combined(rows, RATING)).astype(np.float32))


class CTRIterableDataset(IterableDataset[CTRBatch]):
    """Streams one split of the ctr output as whole :class:`CTRBatch` objects of ``batch_size`` rows.

    Use with ``DataLoader(dataset, batch_size=None)``. Reading goes row group by row group, so memory stays
    near ``shuffle_buffer_rows`` rows whatever the split's size.

    Order: with ``shuffle``, epoch ``e`` draws from ``numpy.random.default_rng((seed, e))`` a permutation
    of the (file, row group) units and a permutation of each filled shuffle buffer; the same seed and epoch
    give the same batches on every process. Without it, rows come in file then row-group order.

    Batches: the split gives ``N = floor(rows / B)`` batches with ``drop_last`` (the default when
    shuffling), else ``ceil(rows / B)`` (only the last one may be short). Global batch ``k`` goes to rank
    ``k % world_size``; batches from ``world_size * floor(N / world_size)`` on are dropped so every rank
    gets the same number (ranks must stay in step for collectives). Within a rank, local batch ``j`` goes
    to DataLoader worker ``j % num_workers``; the DataLoader reads workers round-robin, so the order a
    rank sees does not depend on ``num_workers``. Every rank and worker reads the whole split but builds
    only its own batches (reading is cheap next to building and training).

    Args:
        folder: the ctr output folder (``manifest.json`` beside hive partitions ``split=<name>/``).
        split: partition to read (``train`` / ``valid`` / ``test``); ``None`` reads every file (outputs
            that are not partitioned by split).
        config: model config (columns, ``batch_size``).
        seed: base of the per-epoch shuffle.
        shuffle: shuffle units and rows each epoch (training).
        drop_last: drop a short last batch; defaults to ``shuffle``.
        rank: this process's distributed rank, ``0 <= rank < world_size``.
        world_size: number of distributed processes sharing the split.
        shuffle_buffer_rows: rows shuffled together; defaults to ``SHUFFLE_BUFFER_BATCHES`` batches.
        batch_size: rows per batch; defaults to ``config.batch_size``.

    Raises:
        ManifestError: the split has no Parquet files, or they lack a configured column.
    """

    def __init__(
        self,
        folder: Path,
        split: str | None,
        config: DLRMConfig,
        *,
        seed: int,
        shuffle: bool,
        drop_last: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer_rows: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        super().__init__()
        # Candidate lists of a listwise ranker: rows are shuffled as blocks of this many (whole lists).
        self.list_size = config.list_size
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, world_size={world_size}).")
        self.folder = folder
        self.split = split
        self.builder = CTRBatchBuilder(config, folder, with_ratings=config.objective == "ordinal")
        self.columns = list(dict.fromkeys(self.builder.required))
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = shuffle if drop_last is None else drop_last
        self.rank = rank
        self.world_size = world_size
        self.batch_size = batch_size or config.batch_size
        buffer_rows = shuffle_buffer_rows or SHUFFLE_BUFFER_BATCHES * self.batch_size
        self.buffer_rows = max(buffer_rows, self.batch_size) if shuffle else self.batch_size
        self.epoch = 0
        self.files = [f for f in parquet_files(folder) if split is None or _in_split(folder, f, split)]
        if not self.files:
            raise ManifestError(
                f"{folder}: no Parquet files for split {split!r} (partition folder {SPLIT}={split}/)."
            )
        available = pq.ParquetFile(self.files[0]).schema_arrow.names
        self.builder.check_columns(available)
        if USER_IDX in available and USER_IDX not in self.columns:
            self.columns.append(USER_IDX)  # evaluation groups rows by user (CTRBatch.groups)
        self.units: list[tuple[Path, int]] = []
        self.num_rows = 0
        for path in self.files:
            metadata = pq.ParquetFile(path).metadata
            for group in range(metadata.num_row_groups):
                self.units.append((path, group))
                self.num_rows += metadata.row_group(group).num_rows

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of ``epoch``; call before iterating (DataLoader workers copy it then)."""
        self.epoch = epoch

    @property
    def num_global_batches(self) -> int:
        """Batches of the whole split before rank sharding (``N`` in the class docstring)."""
        rounding = math.floor if self.drop_last else math.ceil
        return int(rounding(self.num_rows / self.batch_size))

    def __len__(self) -> int:
        """Batches this rank yields per epoch (all of its DataLoader workers together)."""
        return self.num_global_batches // self.world_size

    def __iter__(self) -> Iterator[CTRBatch]:
        worker = get_worker_info()
        worker_id, num_workers = (0, 1) if worker is None else (worker.id, worker.num_workers)
        kept = len(self) * self.world_size
        for index, rows in enumerate(self._row_batches()):
            if index >= kept:
                break
            if index % self.world_size != self.rank:
                continue
            if (index // self.world_size) % num_workers == worker_id:
                yield self.builder(rows)

    def _row_batches(self) -> Iterator[pa.Table]:
        """Arrow tables of ``batch_size`` rows in epoch order; only the last may be short (if kept)."""
        rng = np.random.default_rng((self.seed, self.epoch))
        pending: list[pa.RecordBatch] = []
        pending_rows = 0
        for record_batch in self._record_batches(rng):
            pending.append(record_batch)
            pending_rows += record_batch.num_rows
            if pending_rows >= self.buffer_rows:
                buffer = self._mixed(pa.Table.from_batches(pending), rng)
                full = buffer.num_rows - buffer.num_rows % self.batch_size
                for start in range(0, full, self.batch_size):
                    yield buffer.slice(start, self.batch_size)
                pending = buffer.slice(full).to_batches()
                pending_rows = buffer.num_rows - full
        if pending_rows:
            buffer = self._mixed(pa.Table.from_batches(pending), rng)
            for start in range(0, buffer.num_rows, self.batch_size):
                rows = buffer.slice(start, self.batch_size)
                if rows.num_rows == self.batch_size or not self.drop_last:
                    yield rows

    def _record_batches(self, rng: np.random.Generator) -> Iterator[pa.RecordBatch]:
        order = rng.permutation(len(self.units)) if self.shuffle else np.arange(len(self.units))
        for unit in order:
            path, group = self.units[int(unit)]
            parquet = pq.ParquetFile(path)
            yield from parquet.iter_batches(
                batch_size=self.batch_size, row_groups=[group], columns=self.columns
            )

    def _mixed(self, buffer: pa.Table, rng: np.random.Generator) -> pa.Table:
        if not self.shuffle:
            return buffer
        if self.list_size is None:
            return buffer.take(rng.permutation(buffer.num_rows))
        lists = rng.permutation(buffer.num_rows // self.list_size)
        rows = (lists[:, None] * self.list_size + np.arange(self.list_size)[None, :]).ravel()
        return buffer.take(rows)


def _nan_filled(column: pa.Array | pa.ChunkedArray) -> NDArray[np.float64]:
    """A numeric column as float64 with nulls as NaN (ratings: null where a row has none)."""
    filled = pc.fill_null(column.cast(pa.float64()), float("nan"))
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.float64)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def _in_split(folder: Path, path: Path, split: str) -> bool:
    return f"{SPLIT}={split}" in path.relative_to(folder).parts


def check_ctr_columns(folder: Path, manifest: Manifest, config: DLRMConfig) -> None:
    """Fail before training when the ctr output lacks a column the model config names.

    Sparse features must be integer ids or arrays of them, dense features and the label numeric.

    Raises:
        ManifestError: naming the manifest, the column, the expected and found types, and the columns.
    """
    found = {entry["name"]: entry["type"] for entry in manifest.schema}
    roles: list[tuple[tuple[str, ...], frozenset[str], str]] = [
        (config.sparse_features, _ID_TYPES | _ID_LIST_TYPES, "sparse feature (ids or array of ids)"),
        (config.dense_features.names, _NUMERIC_TYPES, "dense feature (numeric)"),
        ((LABEL,), _NUMERIC_TYPES, "label (numeric)"),
    ]
    if config.objective == "ordinal":
        roles.append(((RATING,), _NUMERIC_TYPES, "rating (numeric; target of model.objective=ordinal)"))
    for columns, accepted, role in roles:
        for column in columns:
            if column not in found:
                raise ManifestError(
                    f"{folder / MANIFEST_FILE}: column {column!r} ({role} in the model config) missing; "
                    f"found columns {sorted(found)}."
                )
            if found[column] not in accepted:
                raise ManifestError(
                    f"{folder / MANIFEST_FILE}: column {column!r} has type {found[column]!r}, "
                    f"expected a {role}: one of {sorted(accepted)}."
                )


class CTRDataModule(LightningDataModule):
    """Train / valid / test loaders over one ctr output, checked against its manifest on construction.

    Rank and world size come from the attached trainer (``global_rank``, ``world_size``) when there is
    one, else from the constructor (a plain TorchRec loop). Training reshuffles per epoch only through
    :meth:`set_epoch`: Lightning calls ``set_epoch`` on samplers, not on iterable datasets, so the training
    module calls ``datamodule.set_epoch(current_epoch)`` in ``on_train_epoch_start``.

    Args:
        folder: the ctr output folder of the features stage.
        config: model config (columns, batch size).
        seed: base seed of the training shuffle.
        num_workers: DataLoader worker processes per rank.
        rank: rank used when no trainer is attached.
        world_size: world size used when no trainer is attached.
        shuffle_buffer_rows: see :class:`CTRIterableDataset`.

    Raises:
        ManifestError: the manifest is missing or lacks a configured column.
    """

    def __init__(
        self,
        folder: Path,
        config: DLRMConfig,
        seed: int,
        num_workers: int = 0,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer_rows: int | None = None,
    ) -> None:
        super().__init__()
        self.folder = folder
        self.config = config
        self.seed = seed
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self.manifest = read_manifest(folder)
        check_ctr_columns(folder, self.manifest, config)
        self.epoch = 0
        self._train: CTRIterableDataset | None = None

    @property
    def counts(self) -> Mapping[str, int]:
        """Manifest counts: table sizes (``num_users``, ``num_cat_0``, ...) and row counts."""
        return self.manifest.counts

    def rating_cut_shifts(self) -> tuple[float, ...]:
        """Logit shifts from the label to each ``config.ordinal_cuts`` level, from the training split.

        ``shift_k = logit(P(rating >= cut_k)) - logit(P(label = 1))`` over the training rows that have a
        rating: the ordinal objective's thresholds placed at the marginal rates (see
        ``models.dlrm.module.ordinal_loss``). Every rank reads the same split, so all get the same shifts.

        Raises:
            ManifestError: the split has no rated rows, or a cut (or the label) is never or always met.
        """
        files = [f for f in parquet_files(self.folder) if _in_split(self.folder, f, TRAIN_SPLIT)]
        table = pa.concat_tables([pq.read_table(f, columns=[RATING, LABEL]) for f in files])
        ratings, labels = _nan_filled(table[RATING]), _nan_filled(table[LABEL])
        rated = ~np.isnan(ratings)
        if not rated.any():
            raise ManifestError(
                f"{self.folder}: model.objective=ordinal, but column {RATING!r} of the {TRAIN_SPLIT!r} split "
                "is null on every row (no graded ratings to learn from); use model.objective=binary."
            )
        label_rate = float(np.mean(labels[rated]))
        cut_rates = [float(np.mean(ratings[rated] >= cut)) for cut in self.config.ordinal_cuts]
        names = ["label = 1", *(f"rating >= {cut:g}" for cut in self.config.ordinal_cuts)]
        for name, rate in zip(names, [label_rate, *cut_rates], strict=True):
            if not 0.0 < rate < 1.0:
                raise ManifestError(
                    f"{self.folder}: model.ordinal_cuts: {name!r} holds for {rate:.0%} of the rated "
                    f"{TRAIN_SPLIT!r} rows; every cut must split them (e.g. [2, 3, 5] for 1-5 stars)."
                )
        return tuple(_logit(rate) - _logit(label_rate) for rate in cut_rates)

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle the training split for ``epoch`` (takes effect at the next ``iter`` of its loader)."""
        self.epoch = epoch
        if self._train is not None:
            self._train.set_epoch(epoch)

    def train_dataloader(self) -> DataLoader[CTRBatch]:
        self._train = self._dataset(TRAIN_SPLIT, shuffle=True)
        if self.trainer is not None:
            self.epoch = self.trainer.current_epoch
        self._train.set_epoch(self.epoch)
        return self._loader(self._train)

    def val_dataloader(self) -> DataLoader[CTRBatch]:
        return self._loader(self._dataset(VALID_SPLIT, shuffle=False))

    def test_dataloader(self) -> DataLoader[CTRBatch]:
        return self._loader(self._dataset(TEST_SPLIT, shuffle=False))

    def _dataset(self, split: str, shuffle: bool) -> CTRIterableDataset:
        if not any(entry["name"] == SPLIT for entry in self.manifest.schema):
            raise ManifestError(
                f"{self.folder / MANIFEST_FILE}: no {SPLIT!r} partition column, so there is no {split!r} "
                f"split; read it with CTRIterableDataset(split=None) instead."
            )
        rank, world_size = self.rank, self.world_size
        if self.trainer is not None:
            rank, world_size = self.trainer.global_rank, self.trainer.world_size
        dataset = CTRIterableDataset(
            self.folder,
            split,
            self.config,
            seed=self.seed,
            shuffle=shuffle,
            rank=rank,
            world_size=world_size,
            shuffle_buffer_rows=self.shuffle_buffer_rows,
        )
        if world_size > 1 and len(dataset) == 0 and dataset.num_rows > 0:
            # Every process must see at least one batch (they stay in step for the sharded lookups): the
            # split's rows would be dropped and nothing trained or scored, silently.
            raise InputError(
                f"{self.folder}: the {split!r} split has {dataset.num_rows:,} rows, "
                f"{dataset.num_global_batches} batch(es) of model.batch_size={dataset.batch_size}, "
                f"fewer than the {world_size} training process(es) (trainer.devices): lower model.batch_size "
                f"(at most {max(dataset.num_rows // world_size, 1)}) or train on fewer devices."
            )
        return dataset

    def _loader(self, dataset: CTRIterableDataset) -> DataLoader[CTRBatch]:
        return DataLoader(dataset, batch_size=None, num_workers=self.num_workers)
