"""The factorization head (``model.factorization_head``): its logit and L2 term against a hand computation,
the ranker's mean of both heads, the loss (each head's objective plus the L2 term), sharding and training of
its tables by the fused optimizer, the per-head validation AUCs, and config checks."""

from __future__ import annotations

import dataclasses
import itertools

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.dlrm.config import DLRMConfig, FactorizationHeadConfig, TableSpec
from models.dlrm.module import DLRMLitModule
from models.dlrm.network import BIAS_WIDTH, DLRMRanker, RankerOutput, build_ranker
from models.dlrm.sharding import table_ranks
from recsys.errors import ConfigError
from recsys.metrics.classification import auc
from tests.models.test_dlrm_network import (
    COUNTS,
    _full,
    loader,
    make_batch,
    make_batches,
    make_config,
    make_trainer,
)

MF = FactorizationHeadConfig(features=("user_idx", "item_idx"), embedding_dim=4, l2=0.05)
FM = FactorizationHeadConfig(features=("user_idx", "item_idx", "category_idx"), embedding_dim=4, l2=0.05)


def ranker_config(head: FactorizationHeadConfig) -> DLRMConfig:
    return make_config("dcn", factorization_head=head)


def _ranker(head: FactorizationHeadConfig, seed: int = 0) -> DLRMRanker:
    torch.manual_seed(seed)
    ranker = build_ranker(ranker_config(head), COUNTS, torch.device("cpu"))
    assert ranker.factorization is not None
    with torch.no_grad():
        ranker.factorization.bias.fill_(0.3)
        for table in [
            *ranker.factorization.factor_tables.embedding_bags.values(),
            *ranker.factorization.bias_tables.embedding_bags.values(),
        ]:
            table.weight.normal_()  # far from the near-zero initialisation, so every term counts
    return ranker


def _rows(ranker: DLRMRanker, kind: str, feature: str) -> torch.Tensor:
    """The weights of ``feature``'s factor (``kind="factor"``) or bias table."""
    assert ranker.factorization is not None
    tables = ranker.factorization.factor_tables if kind == "factor" else ranker.factorization.bias_tables
    name = (
        FactorizationHeadConfig.factor_table(feature)
        if kind == "factor"
        else FactorizationHeadConfig.bias_table(feature)
    )
    return tables.embedding_bags[name].weight.detach()


def _pooled(ranker: DLRMRanker, kind: str, feature: str, ids: list[int], mean: bool) -> torch.Tensor:
    rows = _rows(ranker, kind, feature)
    if not ids:
        return torch.zeros(rows.shape[1])
    picked = rows[torch.tensor(ids)]
    return picked.mean(0) if mean else picked.sum(0)


def _row_ids(
    batch_ids: dict[str, torch.Tensor], offsets: dict[str, torch.Tensor], row: int
) -> dict[str, list[int]]:
    return {k: batch_ids[k][offsets[k][row] : offsets[k][row + 1]].tolist() for k in batch_ids}


def test_head_logit_is_a_biased_mf_for_two_features_and_an_fm_for_more() -> None:
    for head in (MF, FM):
        ranker = _ranker(head)
        batch = make_batch(ranker_config(head), torch.Generator().manual_seed(4), batch_size=6)
        output = ranker(batch, heads=True)
        assert isinstance(output, RankerOutput)
        assert output.factorization is not None and output.factor_squared_norms is not None
        jagged = {k: batch.sparse[k] for k in head.features}
        ids = {k: v.values() for k, v in jagged.items()}
        offsets = {k: v.offsets() for k, v in jagged.items()}
        for row in range(6):
            row_ids = _row_ids(ids, offsets, row)
            factors = {
                f: _pooled(ranker, "factor", f, row_ids[f], f == "category_idx") for f in head.features
            }
            biases = {f: _pooled(ranker, "bias", f, row_ids[f], f == "category_idx") for f in head.features}
            expected = 0.3 + sum(float(b.sum()) for b in biases.values())
            expected += sum(
                float(factors[f] @ factors[g]) for f, g in itertools.combinations(head.features, 2)
            )
            norms = sum(float(v.pow(2).sum()) for v in (*factors.values(), *biases.values()))
            assert float(output.factorization[row]) == pytest.approx(expected, rel=1e-5, abs=1e-5)
            assert float(output.factor_squared_norms[row]) == pytest.approx(norms, rel=1e-5)


def test_ranker_logits_are_the_mean_of_both_heads_and_the_network_alone_without_a_head() -> None:
    ranker = _ranker(MF)
    batch = make_batch(ranker_config(MF), torch.Generator().manual_seed(5), batch_size=8)
    output = ranker(batch, heads=True)
    assert output.factorization is not None
    torch.testing.assert_close(ranker(batch), 0.5 * (output.network + output.factorization))
    # the network head is the plain DCN: same weights without the head give the same network logits
    plain = build_ranker(make_config("dcn"), COUNTS, torch.device("cpu"))
    plain.load_state_dict(
        {k: v for k, v in ranker.state_dict().items() if not k.startswith("factorization.")}
    )
    torch.testing.assert_close(plain(batch), output.network)
    assert plain(batch, heads=True).factorization is None


def test_head_tables_are_sized_like_their_features_tables() -> None:
    cfg = make_config("dcn", factorization_head=FM)
    capped = TableSpec("t_item", ("item_idx",), "num_items", "sum", max_rows=7)
    cfg = dataclasses.replace(cfg, tables=(cfg.tables[0], capped, cfg.tables[2]))
    ranker = build_ranker(cfg, COUNTS, torch.device("meta"))
    assert ranker.factorization is not None
    shapes = {
        c.name: (c.num_embeddings, c.embedding_dim, c.feature_names, c.pooling.name)
        for ebc in (ranker.factorization.factor_tables, ranker.factorization.bias_tables)
        for c in ebc.embedding_bag_configs()
    }
    assert shapes == {
        "fm_user_idx": (40, 4, ["user_idx"], "SUM"),
        "fm_item_idx": (7, 4, ["item_idx"], "SUM"),
        "fm_category_idx": (8, 4, ["category_idx"], "MEAN"),
        "fm_bias_user_idx": (40, BIAS_WIDTH, ["user_idx"], "SUM"),
        "fm_bias_item_idx": (7, BIAS_WIDTH, ["item_idx"], "SUM"),
        "fm_bias_category_idx": (8, BIAS_WIDTH, ["category_idx"], "MEAN"),
    }
    assert cfg.table_names == ("t_user", "t_item", "t_category", *shapes)


def _fitted(head: FactorizationHeadConfig | None, steps: int = 40) -> tuple[DLRMLitModule, DLRMConfig]:
    torch.manual_seed(0)
    cfg = make_config("dcn", factorization_head=head)
    module = DLRMLitModule(cfg, COUNTS)
    make_trainer(steps).fit(module, loader(make_batches(cfg, n=20, seed=1)))
    return module, cfg


def test_loss_is_each_heads_objective_plus_the_l2_term_and_each_head_learns() -> None:
    module, cfg = _fitted(MF)
    batch = make_batch(cfg, torch.Generator().manual_seed(9), batch_size=32)
    assert module.model is not None
    with torch.no_grad():
        loss, logits = module.compute_loss(batch)
        output = module.model(batch, heads=True)
    expected = (
        F.binary_cross_entropy_with_logits(output.network, batch.labels)
        + F.binary_cross_entropy_with_logits(output.factorization, batch.labels)
        + MF.l2 * output.factor_squared_norms.mean()
    )
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(logits, output.logits)

    # Both heads learned the synthetic signal (item and user parity) on their own.
    held_out = make_batches(cfg, n=4, seed=2)
    with torch.no_grad():
        outputs = [module.model(b, heads=True) for b in held_out]
    labels = torch.cat([b.labels for b in held_out]).double().numpy()
    for head in ("network", "factorization"):
        scores = torch.cat([getattr(o, head) for o in outputs]).double().numpy()
        assert auc(labels, scores) > 0.75, head


class HeadSnapshot(pl.Callback):
    """The head's weights (full tensors; one process holds every shard) when training starts."""

    def __init__(self) -> None:
        self.before: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, DLRMLitModule) and pl_module.model is not None
        self.before = _head_state(pl_module)


def _head_state(module: DLRMLitModule) -> dict[str, torch.Tensor]:
    assert module.model is not None
    return {
        k: _full(v).clone() for k, v in module.model.state_dict().items() if k.startswith("factorization.")
    }


def test_head_tables_are_sharded_and_trained_by_the_fused_optimizer() -> None:
    torch.manual_seed(0)
    cfg = make_config("dcn", factorization_head=MF)
    module = DLRMLitModule(cfg, COUNTS)
    snapshot = HeadSnapshot()
    trainer = make_trainer(3, callbacks=[snapshot])
    trainer.fit(module, loader(make_batches(cfg, n=3, seed=1)))
    assert module.plan is not None
    assert set(table_ranks(module.plan)) == set(cfg.table_names)
    optimizer = trainer.strategy.optimizers[0]
    head_tables = [k for k in optimizer.params if k.startswith("factorization.") and "embedding_bags" in k]
    assert len(head_tables) == 4  # factors and biases of user and item, updated inside backward
    assert "factorization.bias" in optimizer.params  # the global bias is a dense weight (Adam)
    after = _head_state(module)
    assert after.keys() == snapshot.before.keys() and len(after) == 5
    for key, value in after.items():
        assert not torch.equal(value, snapshot.before[key]), key


def test_validation_logs_each_heads_auc_beside_the_rankers() -> None:
    module, cfg = _fitted(MF)
    val_batches = make_batches(cfg, n=3, seed=2)
    (metrics,) = make_trainer(1).validate(module, loader(val_batches), verbose=False)
    assert module.model is not None
    assert set(metrics) == {"val/auc", "val/gauc", "val/logloss", "val/auc_network", "val/auc_factorization"}
    with torch.no_grad():
        outputs = [module.model(b, heads=True) for b in val_batches]
    labels = torch.cat([b.labels for b in val_batches]).double().numpy()
    for name, pick in (
        ("val/auc", lambda o: o.logits),
        ("val/auc_network", lambda o: o.network),
        ("val/auc_factorization", lambda o: o.factorization),
    ):
        scores = torch.cat([pick(o) for o in outputs]).double().numpy()
        assert metrics[name] == pytest.approx(auc(labels, scores), rel=1e-6), name
    assert np.isfinite([metrics["val/auc_network"], metrics["val/auc_factorization"]]).all()


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (FactorizationHeadConfig(("user_idx",), 4, 0.01), "at least two distinct"),
        (FactorizationHeadConfig(("user_idx", "user_idx"), 4, 0.01), "at least two distinct"),
        (FactorizationHeadConfig(("user_idx", "genre_idx"), 4, 0.01), "'genre_idx' is in no model.tables"),
        (FactorizationHeadConfig(("user_idx", "item_idx"), 6, 0.01), "multiple of 4"),
        (FactorizationHeadConfig(("user_idx", "item_idx"), 4, -1.0), "must be >= 0"),
    ],
)
def test_a_bad_factorization_head_is_refused(head: FactorizationHeadConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_config(factorization_head=head)


def test_a_network_table_named_like_a_head_table_is_refused() -> None:
    cfg = make_config()
    clash = TableSpec("fm_user_idx", ("category_idx",), "num_categories", "mean")
    with pytest.raises(ConfigError, match="fm_user_idx"):
        dataclasses.replace(cfg, tables=(*cfg.tables[:2], clash), factorization_head=MF).validate()
