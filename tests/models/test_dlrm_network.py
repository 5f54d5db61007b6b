"""DLRM network, sharding and Lightning loop in one process: shapes, sizes, learning, metrics, resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.dlrm.batch import CTRBatch
from models.dlrm.config import (
    DenseFeatures,
    DLRMConfig,
    FactorizationHeadConfig,
    OptimConfig,
    ShardingConfig,
    TableSpec,
)
from models.dlrm.module import DLRMLitModule
from models.dlrm.network import DLRMRanker, build_embedding_bag_collection
from models.dlrm.strategy import TorchRecStrategy
from recsys.errors import ConfigError

COUNTS = {"num_users": 40, "num_items": 60, "num_categories": 8}
MAX_CATEGORIES_PER_ROW = 3
BATCH_SIZE = 64
DENSE_FEATURES = ("d0", "d1")
# Strength of the signal the synthetic labels follow: logit = item/user effects + DENSE_WEIGHT * d0.
DENSE_WEIGHT = 2.0
ITEM_EFFECT = 2.5
USER_EFFECT = 1.0


def make_config(
    interaction: str = "dot",
    sharding_types: tuple[str, ...] = ("table_wise",),
    factorization_head: FactorizationHeadConfig | None = None,
) -> DLRMConfig:
    """A small DLRM config over ``COUNTS``: 3 tables (single ids and one multi-hot bag), 2 dense features
    (and, when given, a factorization head)."""
    return DLRMConfig(
        name="dlrm_test",
        family="dlrm",
        interaction=interaction,
        dcn_num_layers=2,
        dcn_low_rank_dim=4,
        objective="binary",
        ordinal_cuts=(),
        embedding_dim=8,
        dense_arch_layer_sizes=(16, 8),
        over_arch_layer_sizes=(16, 1),
        tables=(
            TableSpec("t_user", ("user_idx",), "num_users", "sum"),
            TableSpec("t_item", ("item_idx",), "num_items", "sum"),
            TableSpec("t_category", ("category_idx",), "num_categories", "mean"),
        ),
        factorization_head=factorization_head,
        dense_features=DenseFeatures(log1p=(), identity=DENSE_FEATURES),
        optim=OptimConfig(dense_lr=0.01, sparse_lr=0.1, eps=1e-8, dense_weight_decay=0.0),
        shuffle_buffer_rows=None,
        batch_size=BATCH_SIZE,
        epochs=1,
        early_stopping_patience=None,
        sharding=ShardingConfig(sharding_types=sharding_types, constraints={}, hbm_cap_gib=None),
    )


def make_batch(cfg: DLRMConfig, generator: torch.Generator, batch_size: int = BATCH_SIZE) -> CTRBatch:
    """A seeded ``CTRBatch`` whose labels follow a learnable signal (item parity, user parity, dense d0).

    Labels are drawn from ``sigmoid(ITEM_EFFECT * ±1 + USER_EFFECT * ±1 + DENSE_WEIGHT * d0)``, so a model
    that learns the item and user tables and the dense arch can push the loss well below ln 2.
    """
    users = torch.randint(0, COUNTS["num_users"], (batch_size,), generator=generator)
    items = torch.randint(0, COUNTS["num_items"], (batch_size,), generator=generator)
    n_categories = torch.randint(0, MAX_CATEGORIES_PER_ROW + 1, (batch_size,), generator=generator)
    categories = torch.randint(0, COUNTS["num_categories"], (int(n_categories.sum()),), generator=generator)
    dense = torch.randn(batch_size, len(cfg.dense_features), generator=generator)
    sign = lambda ids: 2.0 * (ids % 2 == 0).float() - 1.0  # noqa: E731
    logit = ITEM_EFFECT * sign(items) + USER_EFFECT * sign(users) + DENSE_WEIGHT * dense[:, 0]
    labels = torch.bernoulli(torch.sigmoid(logit), generator=generator)
    ones = torch.ones(batch_size, dtype=torch.int32)
    values = {"user_idx": users, "item_idx": items, "category_idx": categories}
    lengths = {"user_idx": ones, "item_idx": ones, "category_idx": n_categories.to(torch.int32)}
    keys = list(cfg.sparse_features)
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=keys,
        values=torch.cat([values[k] for k in keys]).to(torch.int64),
        lengths=torch.cat([lengths[k] for k in keys]),
    )
    return CTRBatch(dense=dense, sparse=kjt, labels=labels)


def make_batches(cfg: DLRMConfig, n: int, seed: int) -> list[CTRBatch]:
    generator = torch.Generator().manual_seed(seed)
    return [make_batch(cfg, generator) for _ in range(n)]


def identity_collate(batch: CTRBatch) -> CTRBatch:
    """Batches are built whole (KJT once per batch), so the loader passes them through."""
    return batch


def loader(batches: list[CTRBatch]) -> DataLoader[CTRBatch]:
    return DataLoader(batches, batch_size=None, collate_fn=identity_collate)  # type: ignore[arg-type]


def make_trainer(max_steps: int, devices: int = 1, **kwargs: Any) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        devices=devices,
        strategy=TorchRecStrategy(),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


class LossRecorder(pl.Callback):
    """Keeps the training loss of every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.losses.append(float(outputs["loss"]))


@pytest.mark.parametrize("interaction", ["dot", "dcn"])
def test_unsharded_forward_gives_one_finite_logit_per_row(interaction: str) -> None:
    cfg = make_config(interaction)
    torch.manual_seed(0)
    ranker = DLRMRanker(cfg, build_embedding_bag_collection(cfg, COUNTS, torch.device("cpu")))
    batch = make_batch(cfg, torch.Generator().manual_seed(1), batch_size=5)
    logits = ranker(batch)
    assert logits.shape == (5,)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    # The interaction really differs: DCN's over arch reads (F + 1) * D inputs, DLRM's D + F + C(F, 2).
    n_sparse, dim = len(cfg.sparse_features), cfg.embedding_dim
    expected_in = (
        (n_sparse + 1) * dim if interaction == "dcn" else dim + n_sparse + n_sparse * (n_sparse - 1) // 2
    )
    first_over = next(m for m in ranker.model.over_arch.modules() if isinstance(m, torch.nn.Linear))
    assert first_over.in_features == expected_in


@pytest.mark.parametrize("interaction", ["dot", "dcn"])
def test_replicas_average_independent_networks_over_one_lookup(interaction: str) -> None:
    cfg = dataclasses.replace(make_config(interaction), replicas=3)
    torch.manual_seed(0)
    ranker = DLRMRanker(cfg, build_embedding_bag_collection(cfg, COUNTS, torch.device("cpu")))
    # one set of tables: the replicas carry dense parts only
    assert len(ranker.replicas) == 2 and all(not hasattr(r, "sparse_arch") for r in ranker.replicas)
    tables = [n for n, _ in ranker.named_parameters() if "embedding_bags" in n]
    assert len(tables) == len(cfg.tables)
    batch = make_batch(cfg, torch.Generator().manual_seed(1), batch_size=5)
    output = ranker(batch, heads=True)
    assert output.replicas is not None and len(output.replicas) == 3
    torch.testing.assert_close(output.logits, torch.stack(output.replicas).mean(dim=0))
    # initialised apart: the replicas disagree
    assert not torch.allclose(output.replicas[0], output.replicas[1])
    # the first replica is the plain network: the same logits its own forward gives
    torch.testing.assert_close(
        output.replicas[0], ranker.model(dense_features=batch.dense, sparse_features=batch.sparse).squeeze(-1)
    )
    with pytest.raises(ConfigError, match="replicas"):
        dataclasses.replace(cfg, replicas=0)


def test_replica_loss_is_the_sum_of_each_replicas_own_loss() -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(make_config("dcn"), replicas=2)
    module = DLRMLitModule(cfg, COUNTS)
    make_trainer(1).fit(module, loader(make_batches(cfg, n=1, seed=1)))
    batch = make_batches(cfg, n=1, seed=2)[0]
    with torch.no_grad():
        loss, logits = module.compute_loss(batch)
        output = module._dmp()(batch, heads=True)
    assert output.replicas is not None
    each = [torch.nn.functional.binary_cross_entropy_with_logits(r, batch.labels) for r in output.replicas]
    torch.testing.assert_close(loss, each[0] + each[1])
    torch.testing.assert_close(logits, output.logits)


def test_tables_are_sized_from_manifest_counts_and_capped_by_max_rows() -> None:
    cfg = make_config()
    capped = TableSpec("t_item", ("item_idx",), "num_items", "sum", max_rows=7)
    cfg = dataclasses.replace(cfg, tables=(cfg.tables[0], capped, cfg.tables[2]))
    ebc = build_embedding_bag_collection(cfg, COUNTS, torch.device("meta"))
    sizes = {
        c.name: (c.num_embeddings, c.embedding_dim, c.feature_names) for c in ebc.embedding_bag_configs()
    }
    assert sizes == {
        "t_user": (40, 8, ["user_idx"]),
        "t_item": (7, 8, ["item_idx"]),
        "t_category": (8, 8, ["category_idx"]),
    }
    assert all(p.device.type == "meta" for p in ebc.parameters())


@pytest.mark.parametrize("interaction", ["dot", "dcn"])
def test_lightning_training_lowers_the_loss(interaction: str) -> None:
    torch.manual_seed(0)
    cfg = make_config(interaction)
    module = DLRMLitModule(cfg, COUNTS)
    recorder = LossRecorder()
    steps = 60
    trainer = make_trainer(steps, callbacks=[recorder])
    trainer.fit(module, loader(make_batches(cfg, n=20, seed=1)))
    assert module.model is not None
    assert len(recorder.losses) == steps
    first, last = np.mean(recorder.losses[:5]), np.mean(recorder.losses[-10:])
    assert first == pytest.approx(np.log(2.0), abs=0.15)  # an untrained model is close to chance
    assert last < first - 0.2


def test_dense_optimizer_excludes_fused_tables() -> None:
    module = _trained_module(steps=1)
    optimizer = module.trainer.strategy.optimizers[0]
    dense_keys = [k for k in optimizer.params if "embedding_bags" not in k]
    table_keys = [k for k in optimizer.params if "embedding_bags" in k]
    # Three tables in the fused optimizer, every dense weight in Adam, nothing twice.
    assert len(table_keys) == 3
    n_dense = sum(1 for n, _ in module.named_parameters() if "embedding_bags" not in n)
    assert len(dense_keys) == n_dense


def test_validation_logs_auc_gauc_logloss_that_match_the_metrics() -> None:
    torch.manual_seed(0)
    cfg = make_config()
    module = DLRMLitModule(cfg, COUNTS)
    trainer = make_trainer(30)
    batches = make_batches(cfg, n=10, seed=1)
    val_batches = make_batches(cfg, n=3, seed=2)
    trainer.fit(module, loader(batches))
    (metrics,) = trainer.validate(module, loader(val_batches), verbose=False)
    assert set(metrics) == {"val/auc", "val/gauc", "val/logloss"}
    with torch.no_grad():
        logits = torch.cat([module(b) for b in val_batches]).double().numpy()
    labels = torch.cat([b.labels for b in val_batches]).double().numpy()
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    expected_logloss = -np.mean(labels * np.log(probabilities) + (1 - labels) * np.log(1 - probabilities))
    assert metrics["val/logloss"] == pytest.approx(expected_logloss, rel=1e-5)
    assert metrics["val/auc"] > 0.75  # the learnable signal was learned
    assert 0.0 <= metrics["val/gauc"] <= 1.0


def _trained_module(steps: int, seed: int = 0) -> DLRMLitModule:
    torch.manual_seed(seed)
    cfg = make_config()
    module = DLRMLitModule(cfg, COUNTS)
    make_trainer(steps).fit(module, loader(make_batches(cfg, n=steps, seed=1)))
    return module


def test_single_process_sharded_checkpoint_round_trip(tmp_path: Path) -> None:
    cfg = make_config()
    torch.manual_seed(0)
    module = DLRMLitModule(cfg, COUNTS)
    trainer = make_trainer(4)
    trainer.fit(module, loader(make_batches(cfg, n=4, seed=1)))
    folder = tmp_path / "ckpt"
    trainer.save_checkpoint(folder)
    expected = {k: _full(v) for k, v in module.state_dict().items()}

    torch.manual_seed(123)  # a different initialisation, overwritten by the load
    fresh = DLRMLitModule(cfg, COUNTS)
    resumed = make_trainer(4)
    resumed.fit(fresh, loader(make_batches(cfg, n=4, seed=1)), ckpt_path=folder)
    assert resumed.global_step == 4
    loaded = {k: _full(v) for k, v in fresh.state_dict().items()}
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value, rtol=0, atol=0, msg=key)


def _full(value: Any) -> torch.Tensor:
    """One process holds every shard: rebuild the full tensor from local shards."""
    if isinstance(value, torch.Tensor) and hasattr(value, "local_shards"):
        out = torch.empty(value.size())
        for shard in value.local_shards():
            index = tuple(
                slice(o, o + s)
                for o, s in zip(shard.metadata.shard_offsets, shard.metadata.shard_sizes, strict=True)
            )
            out[index] = shard.tensor
        return out
    return torch.as_tensor(value).detach().clone()
