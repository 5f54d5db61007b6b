"""Sequences from the features stage as left-padded int64 tensors, and the Lightning DataModule.

Shapes: U users, L = ``max_len`` positions, newest item in the last column, padding index 0 on the left.

The features ``sequences`` output has one ``train`` row per user (the last ``features.sequences.max_length``
train items) and one row per valid / test event (the events strictly before it). Every list column is turned
into a padded matrix with one vectorised scatter (:func:`left_pad`), never a Python loop per item.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from models.sequential.network import shortest_first
from recsys.errors import InputError
from recsys.manifest import read_manifest, require_columns
from recsys.schema import PADDING_INDEX, SPLIT, USER_IDX
from recsys.tables import read_arrow

SEQUENCES_OUTPUT = "sequences"
HISTORY = "history_item_idx"
TARGET = "target_item_idx"
TARGET_TIMESTAMP = "target_timestamp"
LENGTH = "length"
EXPECTED_COLUMNS = {
    USER_IDX: "bigint",
    SPLIT: "string",
    HISTORY: "array<bigint>",
    TARGET: "bigint",
    TARGET_TIMESTAMP: "bigint",
    LENGTH: "int",
}


def left_pad(lists: pa.ListArray | pa.ChunkedArray, max_len: int) -> np.ndarray:
    """``[R, max_len]`` int64 matrix of the last ``max_len`` values of each list, left-padded with 0.

    Example: ``[[5, 6, 7], [8]]`` with ``max_len=2`` -> ``[[6, 7], [0, 8]]``.
    """
    array = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.flatten().to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = np.diff(offsets)
    out = np.full((len(lengths), max_len), PADDING_INDEX, dtype=np.int64)
    row = np.repeat(np.arange(len(lengths)), lengths)
    column = max_len - lengths[row] + (np.arange(values.size) - offsets[:-1][row])
    kept = column >= 0
    out[row[kept], column[kept]] = values[kept]
    return out


def append_newest(histories: np.ndarray, newest: np.ndarray) -> np.ndarray:
    """Shift each ``[U, L]`` row left by one and put ``newest [U]`` in the last column (oldest drops)."""
    return np.concatenate([histories[:, 1:], newest.reshape(-1, 1)], axis=1)


@dataclass(frozen=True)
class EvalSequences:
    """The histories one split is evaluated from: user ``users[r]`` is scored from ``histories[r]``."""

    users: np.ndarray
    histories: np.ndarray


@dataclass(frozen=True)
class SequenceData:
    """Everything the sequential models read from one features snapshot.

    Attributes:
        train: ``[U_train, L + 1]`` train sequences (inputs = columns ``:-1``, targets = columns ``1:``).
        evaluation: per split, the history before each user's first event of that split.
        full_users / full_histories: every user with their newest ``L`` events of any split (the query used
            for serving and for ``user_vectors.npy``).
        num_items, num_users: vocabulary sizes from the manifest (reserved indices included).
    """

    train: np.ndarray
    evaluation: dict[str, EvalSequences]
    full_users: np.ndarray
    full_histories: np.ndarray
    num_items: int
    num_users: int


def keep_evaluated_users(data: SequenceData, evaluated: Mapping[str, np.ndarray]) -> SequenceData:
    """``data`` with each split in ``evaluated`` holding only those users' histories: with a sampled
    evaluation (``evaluation.max_users``) the validation and test loops then encode the sample, not every
    user, which on a large log costs more than the training steps themselves."""
    evaluation = dict(data.evaluation)
    for split, users in evaluated.items():
        part = evaluation[split]
        keep = np.isin(part.users, users)
        evaluation[split] = EvalSequences(part.users[keep], part.histories[keep])
    return replace(data, evaluation=evaluation)


def load_sequences(features: Path, max_len: int) -> SequenceData:
    """Read ``<features>/sequences`` (checked against its manifest) into padded matrices.

    Raises:
        ManifestError: the output is missing or lacks a column / has another type.
        InputError: it holds no train row of two or more items.
    """
    folder = features / SEQUENCES_OUTPUT
    manifest = read_manifest(folder)
    require_columns(folder, manifest, EXPECTED_COLUMNS)
    split_manifest = read_manifest(features / "split")
    table = read_arrow(folder, columns=list(EXPECTED_COLUMNS))
    split = table.column(SPLIT)
    train_rows = table.filter(pc.equal(split, "train"))
    # A one-item sequence has no (previous items -> next item) pair to learn from; a batch of only such rows
    # (length bucketing groups them) would have no input column at all.
    learnable = pc.greater_equal(pc.list_value_length(train_rows.column(HISTORY)), 2)
    if not pc.any(learnable).as_py():
        raise InputError(
            f"{folder}: no {SPLIT}='train' row with two or more items; nothing to train a sequence model on."
        )
    train = left_pad(train_rows.filter(learnable).column(HISTORY), max_len + 1)
    events = table.filter(pc.not_equal(split, "train")).sort_by(
        # events of one timestamp: the one with the longer history is the later one in the features order
        [(USER_IDX, "ascending"), (TARGET_TIMESTAMP, "ascending"), (LENGTH, "ascending")]
    )
    evaluation = {}
    for name in ("valid", "test"):
        rows = events.filter(pc.equal(events.column(SPLIT), name))
        users = rows.column(USER_IDX).to_numpy()
        first = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if users.size else np.zeros(0, np.int64)
        evaluation[name] = EvalSequences(
            users[first].astype(np.int64), left_pad(rows.column(HISTORY).take(pa.array(first)), max_len)
        )
    full_users, full_histories = _newest_histories(train_rows, events, max_len)
    return SequenceData(
        train=train,
        evaluation=evaluation,
        full_users=full_users,
        full_histories=full_histories,
        num_items=int(split_manifest.counts["num_items"]),
        num_users=int(split_manifest.counts["num_users"]),
    )


def _newest_histories(train_rows: pa.Table, events: pa.Table, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the newest ``max_len`` events: the last valid/test row's history plus its target, or the
    train row for users without later events."""
    users = np.asarray(train_rows.column(USER_IDX).to_numpy(), dtype=np.int64)
    histories = left_pad(train_rows.column(HISTORY), max_len)
    event_users = np.asarray(events.column(USER_IDX).to_numpy(), dtype=np.int64)
    if event_users.size:
        last = np.flatnonzero(np.r_[event_users[1:] != event_users[:-1], True])
        newest = append_newest(
            left_pad(events.column(HISTORY).take(pa.array(last)), max_len),
            np.asarray(events.column(TARGET).take(pa.array(last)).to_numpy(), dtype=np.int64),
        )
        without_events = ~np.isin(users, event_users[last])
        users = np.concatenate([users[without_events], event_users[last]])
        histories = np.concatenate([histories[without_events], newest])
    order = np.argsort(users, kind="stable")
    return users[order], histories[order]


class LengthBucketSampler(Sampler[list[int]]):
    """Batches of rows with similar lengths, in a new random order every epoch.

    Rows are ordered by length (ties broken at random), cut into batches of ``batch_size``, and the batches
    are shuffled. With :func:`trim_left_padding` a batch then costs what its longest row needs instead of
    ``max_len``; on MovieLens-100K (median 65 of up to 200 train items) that halves an epoch.
    """

    def __init__(self, lengths: np.ndarray, batch_size: int, seed: int) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        self.epoch += 1
        order = np.lexsort((rng.random(len(self.lengths)), self.lengths))
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for b in rng.permutation(len(batches)):
            yield batches[b].tolist()


class SequenceDataModule(pl.LightningDataModule):
    """Train batches of ``[B, L + 1]`` sequences (random or length-bucketed, reshuffled each epoch);
    validation / test batches of ``(users [B], histories [B, L])`` for the split being evaluated."""

    def __init__(
        self, data: SequenceData, batch_size: int, eval_batch_size: int, seed: int, bucket_by_length: bool
    ) -> None:
        super().__init__()
        self.data = data
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.bucket_by_length = bucket_by_length

    def train_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        dataset = TensorDataset(torch.from_numpy(self.data.train))
        if self.bucket_by_length:
            lengths = (self.data.train != PADDING_INDEX).sum(axis=1)
            sampler = LengthBucketSampler(lengths, self.batch_size, self.seed)
            return DataLoader(dataset, batch_sampler=sampler)
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=True, generator=generator)

    def _eval_loader(self, split: str) -> DataLoader[tuple[torch.Tensor, ...]]:
        part = self.data.evaluation[split]
        # Shortest histories first: each batch is trimmed to its longest history (the users travel along).
        order = shortest_first(part.histories)
        dataset = TensorDataset(torch.from_numpy(part.users[order]), torch.from_numpy(part.histories[order]))
        return DataLoader(dataset, batch_size=self.eval_batch_size, shuffle=False)

    def val_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader[tuple[torch.Tensor, ...]]:
        return self._eval_loader("test")
