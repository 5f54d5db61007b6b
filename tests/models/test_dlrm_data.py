"""CTR batches from real features outputs, checked row by row against a slow per-row reference built from
``read_arrow(...).to_pylist()``; streaming order, epoch shuffles and rank / worker sharding."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from pyspark.sql import SparkSession
from torch.utils.data import DataLoader

from models.dlrm.batch import CTRBatch
from models.dlrm.config import DLRMConfig
from models.dlrm.data import CTRBatchBuilder, CTRDataModule, CTRIterableDataset
from recsys.config import compose, to_plain, typed
from recsys.errors import InputError, ManifestError
from recsys.schema import OOV_INDEX
from recsys.tables import read_arrow
from tests.conftest import spark_overrides
from tests.helpers import raw_files
from tests.helpers.runs import ingest_and_features

BATCH = 64
EVAL_BATCH = 16
BUFFER = 128
SEED = 7

Row = tuple[tuple[tuple[int, ...], ...], tuple[float, ...], float]


def _synthetic_model(**changes: Any) -> DLRMConfig:
    """conf/model/dlrm.yaml with the synthetic ``segment`` attribute in place of the MovieLens ones."""
    # The synthetic users' one attribute (segment) gets its table from data.user_attributes.
    mapping = to_plain(compose(["model=dlrm", "data=synthetic"]))["model"]
    assert [t.name for t in typed(DLRMConfig, mapping, "model").tables][-1] == "t_segment"
    return dataclasses.replace(typed(DLRMConfig, mapping, "model"), **changes)


def _criteo_model(max_rows: int | None = None) -> DLRMConfig:
    mapping = to_plain(compose(["model=dlrm_criteo"]))["model"]
    if max_rows is not None:
        for table in mapping["tables"]:
            table["max_rows"] = max_rows
    return typed(DLRMConfig, mapping, "model")


@pytest.fixture(scope="module")
def synthetic(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    overrides = ["data=synthetic", "data.num_users=50", "data.num_items=40", "data.num_events=800"]
    cfg = to_plain(compose([*spark_overrides(tmp_path_factory.mktemp("dlrm-syn")), *overrides]))
    return ingest_and_features(spark, cfg)[1].stage_dir / "ctr"


@pytest.fixture(scope="module")
def criteo(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = raw_files.criteo(tmp_path_factory.mktemp("criteo-raw"))
    root = tmp_path_factory.mktemp("dlrm-criteo")
    cfg = to_plain(compose([*spark_overrides(root), "data=criteo", f"data.path={raw}"]))
    return ingest_and_features(spark, cfg)[1].stage_dir / "ctr"


def _split(folder: Path, split: str) -> pa.Table:
    table = read_arrow(folder)
    return table.filter(pc.equal(table["split"], split))


def _reference(rows: list[dict[str, Any]], cfg: DLRMConfig) -> list[Row]:
    """One row at a time, straight from the definition in CTRBatchBuilder's docstring."""
    max_rows = {f: t.max_rows for t in cfg.tables if t.max_rows for f in t.features}
    out: list[Row] = []
    for row in rows:
        bags = []
        for key in cfg.sparse_features:
            raw = row[key]
            ids = [] if raw is None else raw if isinstance(raw, list) else [raw]
            ids = [OOV_INDEX if i is None else i for i in ids]
            m = max_rows.get(key)
            bags.append(tuple(i % m if m and i >= m else i for i in ids))
        dense = [float(np.float32(np.log1p(max(row[f] or 0, 0)))) for f in cfg.log1p_features]
        dense += [float(np.float32(row[f] or 0)) for f in cfg.identity_features]
        out.append((tuple(bags), tuple(dense), float(row["label"])))
    return out


def _rows(batch: CTRBatch, cfg: DLRMConfig) -> list[Row]:
    assert batch.sparse.keys() == list(cfg.sparse_features)
    jagged = batch.sparse.to_dict()
    bags = {k: [tuple(int(v) for v in t.tolist()) for t in jagged[k].to_dense()] for k in cfg.sparse_features}
    return [
        (
            tuple(bags[k][i] for k in cfg.sparse_features),
            tuple(float(x) for x in batch.dense[i].tolist()),
            float(batch.labels[i]),
        )
        for i in range(batch.batch_size)
    ]


def _stream(dataset: CTRIterableDataset, num_workers: int = 0) -> list[CTRBatch]:
    return list(DataLoader(dataset, batch_size=None, num_workers=num_workers))


def _train(folder: Path, cfg: DLRMConfig, **kwargs: Any) -> CTRIterableDataset:
    kwargs = {"seed": SEED, "shuffle": True, "batch_size": BATCH, "shuffle_buffer_rows": BUFFER, **kwargs}
    return CTRIterableDataset(folder, "train", cfg, **kwargs)


def test_batch_matches_per_row_reference(synthetic: Path) -> None:
    cfg = _synthetic_model()
    for split in ("train", "valid"):
        table = _split(synthetic, split)
        batch = CTRBatchBuilder(cfg, synthetic)(table)
        expected = _reference(table.to_pylist(), cfg)
        assert batch.dense.shape == (table.num_rows, len(cfg.dense_features))
        # KJT layout is key-major: all B bags of the first key, then of the second, ...
        assert batch.sparse.lengths().tolist() == [
            len(row[0][key]) for key in range(len(cfg.sparse_features)) for row in expected
        ]
        assert _rows(batch, cfg) == expected
    # The data has what the rules are about: bags of several ids, empty bags, CTRs without history.
    train = _split(synthetic, "train").to_pylist()
    assert any(len(r["recent_item_idx"]) > 1 for r in train)
    assert any(len(r["recent_item_idx"]) == 0 for r in train)
    assert any(r["user_ctr_before"] is None for r in train)


def test_builder_nulls_empty_bags_and_clipping() -> None:
    cfg = _synthetic_model()
    table = pa.table(
        {
            "user_idx": pa.array([5, None], pa.int64()),
            "item_idx": pa.array([2, 3], pa.int64()),
            "recent_item_idx": pa.array([[4, None, 6], None], pa.list_(pa.int64())),
            "category_idx": pa.array([[], [7]], pa.list_(pa.int64())),
            "segment_idx": pa.array([None, 3], pa.int64()),
            "user_count_before": pa.array([-3, None], pa.int64()),
            "user_positives_before": pa.array([0, 2], pa.int64()),
            "item_count_before": pa.array([1, 2], pa.int64()),
            "item_positives_before": pa.array([None, 0], pa.int64()),
            "user_ctr_before": pa.array([None, 0.25]),
            "item_ctr_before": pa.array([0.5, None]),
            "label": pa.array([1, 0], pa.int32()),
        }
    )
    batch = CTRBatchBuilder(cfg, Path("hand-made"))(table)
    jagged = batch.sparse.to_dict()
    assert jagged["user_idx"].values().tolist() == [5, OOV_INDEX]
    assert jagged["recent_item_idx"].lengths().tolist() == [3, 0]
    assert jagged["recent_item_idx"].values().tolist() == [4, OOV_INDEX, 6]
    assert jagged["category_idx"].lengths().tolist() == [0, 1]
    assert jagged["segment_idx"].values().tolist() == [OOV_INDEX, 3]
    expected_dense = [
        [0.0, 0.0, math.log1p(1), 0.0, 0.0, 0.5],
        [0.0, math.log1p(2), math.log1p(2), 0.0, 0.25, 0.0],
    ]
    np.testing.assert_allclose(batch.dense.numpy(), expected_dense, rtol=1e-6)
    assert batch.labels.tolist() == [1.0, 0.0]
    assert (batch.sparse.values().dtype, batch.sparse.lengths().dtype) == (torch.int64, torch.int32)
    assert (batch.dense.dtype, batch.labels.dtype) == (torch.float32, torch.float32)


def test_eval_stream_keeps_file_order_and_the_short_last_batch(synthetic: Path) -> None:
    cfg = _synthetic_model()
    dataset = CTRIterableDataset(synthetic, "valid", cfg, seed=SEED, shuffle=False, batch_size=EVAL_BATCH)
    expected = _reference(_split(synthetic, "valid").to_pylist(), cfg)
    batches = _stream(dataset)
    assert len(batches) == len(dataset) == math.ceil(len(expected) / EVAL_BATCH)
    assert [b.batch_size for b in batches[:-1]] == [EVAL_BATCH] * (len(batches) - 1)
    assert [r for b in batches for r in _rows(b, cfg)] == expected


def test_train_ranks_get_disjoint_equal_shares(synthetic: Path) -> None:
    cfg = _synthetic_model()
    everything = Counter(_reference(_split(synthetic, "train").to_pylist(), cfg))
    total = sum(everything.values())
    single = _stream(_train(synthetic, cfg))
    assert len(single) == total // BATCH and all(b.batch_size == BATCH for b in single)
    shares = [_stream(_train(synthetic, cfg, rank=rank, world_size=2)) for rank in (0, 1)]
    per_rank = total // BATCH // 2
    assert [len(s) for s in shares] == [per_rank, per_rank]
    seen = [Counter(r for b in share for r in _rows(b, cfg)) for share in shares]
    assert not (seen[0] + seen[1]) - everything  # disjoint, and every row is a real one
    assert sum((seen[0] + seen[1]).values()) == 2 * per_rank * BATCH
    # Rank r gets global batches r, r + 2, ... of the same epoch order.
    interleaved = [b for pair in zip(*shares, strict=True) for b in pair]
    assert [_rows(b, cfg) for b in interleaved] == [_rows(b, cfg) for b in single[: 2 * per_rank]]


def test_shuffle_is_seeded_per_epoch(synthetic: Path) -> None:
    cfg = _synthetic_model()

    def order(seed: int, epoch: int) -> list[Row]:
        dataset = _train(synthetic, cfg, seed=seed)
        dataset.set_epoch(epoch)
        return [r for b in _stream(dataset) for r in _rows(b, cfg)]

    first = order(SEED, 0)
    assert order(SEED, 0) == first
    assert order(SEED, 1) != first
    assert order(SEED + 1, 0) != first
    unshuffled = _reference(_split(synthetic, "train").to_pylist(), cfg)[: len(first)]
    assert first != unshuffled


def test_workers_share_batches_without_changing_the_order(synthetic: Path) -> None:
    cfg = _synthetic_model()
    alone = [_rows(b, cfg) for b in _stream(_train(synthetic, cfg))]
    with_workers = [_rows(b, cfg) for b in _stream(_train(synthetic, cfg), num_workers=2)]
    assert with_workers == alone


def test_datamodule_reads_counts_and_the_trainer_shard(synthetic: Path) -> None:
    cfg = _synthetic_model(batch_size=BATCH)
    module = CTRDataModule(synthetic, cfg, seed=SEED, shuffle_buffer_rows=BUFFER)
    assert module.counts["num_segment"] > 0 and module.counts["num_users"] > 0
    rows = _split(synthetic, "train").num_rows
    assert len(module.train_dataloader()) == rows // BATCH
    module.trainer = SimpleNamespace(global_rank=1, world_size=2, current_epoch=3)  # type: ignore[assignment]
    loader = module.train_dataloader()
    dataset = loader.dataset
    assert isinstance(dataset, CTRIterableDataset)
    assert (dataset.rank, dataset.world_size, dataset.epoch) == (1, 2, 3)
    assert len(loader) == rows // BATCH // 2
    module.set_epoch(4)
    assert dataset.epoch == 4
    # The small valid split is one batch: too few for two processes (see the next test).
    module.trainer = SimpleNamespace(global_rank=0, world_size=1, current_epoch=4)  # type: ignore[assignment]
    valid = module.val_dataloader().dataset
    assert isinstance(valid, CTRIterableDataset) and valid.split == "valid" and not valid.shuffle


def test_a_split_smaller_than_one_batch_per_process_is_refused_with_the_fix(synthetic: Path) -> None:
    rows = _split(synthetic, "test").num_rows
    module = CTRDataModule(synthetic, _synthetic_model(batch_size=rows), seed=SEED)
    module.trainer = SimpleNamespace(global_rank=0, world_size=2, current_epoch=0)  # type: ignore[assignment]
    # One batch of the whole split cannot be shared by two processes: nothing would be scored.
    with pytest.raises(InputError, match=rf"'test' split has {rows:,} rows, 1 batch.*model.batch_size"):
        module.test_dataloader()
    module.trainer = SimpleNamespace(global_rank=0, world_size=1, current_epoch=0)  # type: ignore[assignment]
    assert len(module.test_dataloader()) == 1


def test_missing_column_is_named(synthetic: Path) -> None:
    movielens = typed(DLRMConfig, compose(["model=dlrm"])["model"], "model")
    with pytest.raises(ManifestError, match=r"'gender_idx'.*segment_idx"):
        CTRDataModule(synthetic, movielens, seed=SEED)
    with pytest.raises(ManifestError, match=r"'gender_idx'.*segment_idx"):
        CTRIterableDataset(synthetic, "train", movielens, seed=SEED, shuffle=True)
    table = _split(synthetic, "valid").drop_columns(["item_ctr_before"])
    with pytest.raises(ManifestError, match=rf"{synthetic}.*'item_ctr_before'.*available"):
        CTRBatchBuilder(_synthetic_model(), synthetic)(table)


def test_criteo_batches_and_hashing(criteo: Path) -> None:
    cfg = _criteo_model()
    table = read_arrow(criteo)
    expected = _reference(table.to_pylist(), cfg)
    batch = CTRBatchBuilder(cfg, criteo)(table)
    assert len(batch.sparse.keys()) == 26
    assert batch.sparse.lengths().tolist() == [1] * (26 * table.num_rows)
    assert batch.dense.shape == (table.num_rows, 13)
    assert _rows(batch, cfg) == expected
    assert CTRDataModule(criteo, cfg, seed=SEED).counts["num_cat_25"] > 0

    hashed = _criteo_model(max_rows=2)
    raw_ids = np.stack([table[f"cat_{i}_idx"].to_numpy() for i in range(26)])  # [F, B]
    assert (raw_ids >= 2).any()
    streamed = _stream(CTRIterableDataset(criteo, None, hashed, seed=SEED, shuffle=False))
    assert len(streamed) == 1
    values = streamed[0].sparse.values().numpy().reshape(26, -1)
    assert values.max() < 2
    np.testing.assert_array_equal(values, np.where(raw_ids >= 2, raw_ids % 2, raw_ids))
    assert _rows(streamed[0], hashed) == _reference(table.to_pylist(), hashed)

    # The features stage splits Criteo by row order, so the DataModule serves its splits too.
    module = CTRDataModule(criteo, dataclasses.replace(cfg, batch_size=2), seed=SEED)
    counts = module.counts
    assert counts["rows_train"] + counts["rows_valid"] + counts["rows_test"] == table.num_rows
    train_batches = list(module.train_dataloader())
    assert len(train_batches) == counts["rows_train"] // 2 > 0
