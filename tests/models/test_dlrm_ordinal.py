"""The ordinal objective (``model.objective=ordinal``): the cumulative-link loss against a hand computation,
the direction in which the graded rating moves the logit, the per-cut shifts against the training split's
marginal rates, ratings read from the ctr rows, and a short Lightning fit that uses them."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from pyspark.sql import SparkSession

from models.dlrm.config import DLRMConfig
from models.dlrm.data import CTRBatchBuilder, CTRDataModule
from models.dlrm.module import DLRMLitModule, ordinal_loss
from recsys.config import typed
from recsys.errors import ConfigError, ManifestError
from recsys.tables import read_arrow
from tests.models.test_dlrm_network import make_trainer
from tests.models.test_dlrm_pyfunc import build_features, ctr_folder

CUTS = torch.tensor([2.0, 3.0, 5.0])
SHIFTS = torch.tensor([2.5, 1.3, -1.5])
FIT_STEPS = 5


def _loss(logits: list[float], labels: list[float], ratings: list[float]) -> torch.Tensor:
    return ordinal_loss(torch.tensor(logits), torch.tensor(labels), torch.tensor(ratings), CUTS, SHIFTS)


def _bce(logit: float, target: float) -> float:
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(target * math.log(p) + (1.0 - target) * math.log(1.0 - p))


def test_rows_without_a_rating_give_the_label_bce() -> None:
    logits, labels = [0.3, -1.2, 2.0], [1.0, 0.0, 1.0]
    expected = F.binary_cross_entropy_with_logits(torch.tensor(logits), torch.tensor(labels))
    assert torch.allclose(_loss(logits, labels, [math.nan] * 3), expected)


def test_loss_is_the_mean_over_label_and_known_cut_terms() -> None:
    # Row 0: rated 3 (label 0): cuts 2, 3 met, 5 not. Row 1: no rating: label term only.
    logit0, logit1 = 0.4, -0.7
    terms = [
        _bce(logit0, 0.0),
        _bce(logit0 + 2.5, 1.0),
        _bce(logit0 + 1.3, 1.0),
        _bce(logit0 - 1.5, 0.0),
        _bce(logit1, 1.0),
    ]
    loss = _loss([logit0, logit1], [0.0, 1.0], [3.0, math.nan])
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_a_higher_rating_pushes_the_same_label_higher() -> None:
    """Label alone cannot tell 4 from 5 stars or 1 from 3; the ordinal terms do, through the one logit."""
    logits = torch.zeros(4, requires_grad=True)
    loss = ordinal_loss(
        logits, torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([4.0, 5.0, 3.0, 1.0]), CUTS, SHIFTS
    )
    loss.backward()
    grad = logits.grad
    assert grad is not None
    assert grad[1] < grad[0] < 0  # both pushed up, the 5-star row more
    assert 0 < grad[2] < grad[3]  # both pushed down, the 1-star row more


def test_cut_shifts_are_the_marginal_logits_of_the_training_split(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cfg = build_features(spark, tmp_path_factory.mktemp("ordinal-shifts"), "dcn")
    model_cfg = typed(DLRMConfig, cfg["model"], "model")
    assert model_cfg.objective == "ordinal"
    folder = ctr_folder(cfg)
    train = read_arrow(folder).to_pandas()
    train = train[(train["split"] == "train") & train["rating"].notna()]
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    expected = [
        logit((train["rating"] >= c).mean()) - logit(train["label"].mean()) for c in model_cfg.ordinal_cuts
    ]
    shifts = CTRDataModule(folder, model_cfg, seed=0).rating_cut_shifts()
    assert shifts == pytest.approx(expected, rel=1e-9)
    assert shifts[0] > shifts[1] > 0 > shifts[2]  # cuts 2, 3 are met more often than the label, 5 less

    never_met = dataclasses.replace(model_cfg, ordinal_cuts=(2.0, 6.0))
    with pytest.raises(ManifestError, match=r"rating >= 6.*0%"):
        CTRDataModule(folder, never_met, seed=0).rating_cut_shifts()


def test_fit_with_the_ordinal_objective_sets_shifts_and_lowers_the_loss(
    spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cfg = build_features(spark, tmp_path_factory.mktemp("ordinal-fit"), "dcn")
    model_cfg = typed(DLRMConfig, cfg["model"], "model")
    datamodule = CTRDataModule(ctr_folder(cfg), model_cfg, seed=0)
    module = DLRMLitModule(model_cfg, datamodule.counts)
    trainer = make_trainer(FIT_STEPS, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    assert module.cut_shifts is not None
    assert module.cut_shifts.tolist() == pytest.approx(datamodule.rating_cut_shifts(), rel=1e-6)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch.ratings is not None and torch.isfinite(batch.ratings).any()
    module.train()
    loss, logits = module.compute_loss(batch)
    binary = F.binary_cross_entropy_with_logits(logits, batch.labels)
    assert torch.isfinite(loss) and not torch.allclose(loss, binary)


def _tiny_mapping(**changes: object) -> dict[str, object]:
    return {
        "name": "tiny",
        "family": "dlrm",
        "interaction": "dot",
        "dcn_num_layers": 3,
        "dcn_low_rank_dim": 64,
        "objective": "binary",
        "ordinal_cuts": [],
        "embedding_dim": 4,
        "dense_arch_layer_sizes": [4],
        "over_arch_layer_sizes": [4, 1],
        "tables": [{"name": "t_user", "features": ["user_idx"], "size": "num_users", "pooling": "sum"}],
        "factorization_head": None,
        "dense_features": {"log1p": [], "identity": ["x"]},
        "optim": {"dense_lr": 0.01, "sparse_lr": 0.01, "eps": 1e-8, "dense_weight_decay": 0.0},
        "shuffle_buffer_rows": None,
        "batch_size": 2,
        "epochs": 1,
        "early_stopping_patience": None,
        "sharding": {"sharding_types": ["table_wise"], "constraints": {}, "hbm_cap_gib": None},
        **changes,
    }


def test_builder_reads_ratings_only_when_asked_and_nulls_become_nan() -> None:
    cfg = typed(DLRMConfig, _tiny_mapping(objective="ordinal", ordinal_cuts=[2, 3, 5]), "model")
    rows = pa.table({"user_idx": [1, 2], "x": [0.5, 1.0], "label": [1, 0], "rating": [4.0, None]})
    with_ratings = CTRBatchBuilder(cfg, Path("<test>"), with_ratings=True)(rows)
    assert with_ratings.ratings is not None
    assert with_ratings.ratings[0].item() == 4.0 and math.isnan(with_ratings.ratings[1].item())
    # Scoring (the pyfunc) builds without ratings: the column is neither needed nor read.
    assert CTRBatchBuilder(cfg, Path("<test>"))(rows.drop_columns(["rating"])).ratings is None
    with pytest.raises(ManifestError, match="'rating'"):
        CTRBatchBuilder(cfg, Path("<test>"), with_ratings=True)(rows.drop_columns(["rating"]))


def test_ordinal_without_cuts_or_an_unknown_objective_is_refused() -> None:
    with pytest.raises(ConfigError, match="ordinal_cuts"):
        typed(DLRMConfig, _tiny_mapping(objective="ordinal"), "model")
    with pytest.raises(ConfigError, match=r"model\.objective='mse'"):
        typed(DLRMConfig, _tiny_mapping(objective="mse"), "model")
