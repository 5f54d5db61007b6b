"""The DLRM pyfunc: a tiny ranker trained through DMP on synthetic features, logged to a temporary SQLite
MLflow store, loaded back with ``mlflow.pyfunc.load_model`` and scoring exactly like the trained module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import mlflow
import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pytest
import torch
from pyspark.sql import SparkSession

from models.dlrm.checkpoint import save_sharded
from models.dlrm.config import DLRMConfig
from models.dlrm.data import CTRBatchBuilder, CTRDataModule
from models.dlrm.module import DLRMLitModule
from models.dlrm.pyfunc import (
    SCORE,
    config_to_mapping,
    full_state_from_checkpoint,
    log_dlrm,
    mapping_to_config,
    unsharded_state_dict,
)
from recsys.config import compose, to_plain, typed
from recsys.schema import LABEL
from recsys.tables import read_arrow
from recsys.tracking.runs import configure
from tests.conftest import spark_overrides
from tests.helpers.isolated import assert_carries_its_code, load_without_checkout
from tests.helpers.runs import ingest_and_features
from tests.models.test_dlrm_network import make_trainer

SYNTHETIC = ["data=synthetic", "data.num_users=60", "data.num_items=40", "data.num_events=1500"]
TRAIN_STEPS = 6
BATCH_ROWS = 128
SEED = 3
EXAMPLE_ROWS = 3


def compose_cfg(root: Path, *overrides: str) -> dict[str, Any]:
    """A config rooted at ``root`` for the synthetic data (a DLRM-family model gets the ``segment`` table
    from ``data.user_attributes``)."""
    cfg: dict[str, Any] = to_plain(compose([*spark_overrides(root), *SYNTHETIC, *overrides]))
    if cfg["model"]["family"] == "dlrm":
        cfg["model"]["batch_size"] = BATCH_ROWS
        cfg["model"]["shuffle_buffer_rows"] = None
    return cfg


def build_features(spark: SparkSession, root: Path, model: str = "dlrm") -> dict[str, Any]:
    """Ingest + features for the synthetic data under ``root``; returns the ``model=<model>`` config."""
    cfg = compose_cfg(root, f"model={model}")
    ingest_and_features(spark, cfg)
    return cfg


def ctr_folder(cfg: dict[str, Any]) -> Path:
    return Path(cfg["paths"]["root"]).resolve() / str(cfg["run"]["date"]) / "features" / "ctr"


def train_tiny(cfg: dict[str, Any]) -> DLRMLitModule:
    """A few single-process DMP steps on the features' CTR rows (not a good model: a trained one)."""
    model_cfg = typed(DLRMConfig, cfg["model"], "model")
    pl.seed_everything(SEED)
    datamodule = CTRDataModule(ctr_folder(cfg), model_cfg, seed=SEED)
    module = DLRMLitModule(model_cfg, datamodule.counts)
    trainer = make_trainer(TRAIN_STEPS, limit_val_batches=0)
    trainer.fit(module, datamodule=datamodule)
    return module


@pytest.fixture(scope="module", params=["dlrm", "dcn"])
def trained(
    request: pytest.FixtureRequest, spark: SparkSession, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], DLRMLitModule]:
    """``dcn`` (conf/model/dcn.yaml) looks the recent-items bag up in the item table: 2 KJT keys, 1 table."""
    cfg = build_features(spark, tmp_path_factory.mktemp(f"{request.param}-pyfunc"), request.param)
    return cfg, train_tiny(cfg)


def as_input(rows: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Pyfunc input: the needed columns, id lists as Python lists of ints."""
    out = rows[columns].copy()
    for name in columns:
        if out[name].dtype == object:
            out[name] = [[int(x) for x in v] if v is not None else [] for v in out[name]]
    return out


def test_config_round_trips_through_its_mapping(trained: tuple[dict[str, Any], DLRMLitModule]) -> None:
    _, module = trained
    assert mapping_to_config(json.loads(json.dumps(config_to_mapping(module.cfg)))) == module.cfg


def test_logged_pyfunc_scores_like_the_trained_module(
    trained: tuple[dict[str, Any], DLRMLitModule], tmp_path: Path
) -> None:
    cfg, module = trained
    model_cfg = module.cfg
    table = read_arrow(ctr_folder(cfg))
    table = table.filter(pc.equal(table["split"], "test"))
    expected = module.score(CTRBatchBuilder(model_cfg, ctr_folder(cfg))(table)).detach().numpy()

    columns = list(dict.fromkeys([*model_cfg.sparse_features, *model_cfg.dense_features]))
    rows = as_input(table.to_pandas(), columns)
    assert LABEL not in rows.columns  # serving rows carry no label
    # Artifacts under tmp_path too: a bare sqlite URI would put them in ./mlruns of the working folder.
    tracking = {
        "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
        "artifact_root": str(tmp_path / "artifacts"),
        "experiment": "dlrm-pyfunc",
    }
    with mlflow.start_run(experiment_id=configure(tracking)):
        info = log_dlrm(module, model_cfg, module.counts, rows.head(EXAMPLE_ROWS))
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    scores = loaded.predict(rows)
    assert isinstance(scores, pd.DataFrame) and list(scores.columns) == [SCORE]
    np.testing.assert_allclose(scores[SCORE].to_numpy(), expected, rtol=0, atol=1e-6)
    assert info.signature is not None and set(info.signature.inputs.input_names()) == set(columns)
    # The same scores where the checkout cannot be imported: the model carries its code.
    isolated = load_without_checkout(
        info.model_uri, tracking["tracking_uri"], tmp_path, rows.head(20).to_dict(orient="records")
    )
    assert_carries_its_code(isolated)
    np.testing.assert_allclose(isolated.answer[SCORE], expected[:20], rtol=0, atol=1e-6)


def test_unsharded_state_dict_has_full_tables(trained: tuple[dict[str, Any], DLRMLitModule]) -> None:
    _, module = trained
    state = unsharded_state_dict(module)
    for table in module.cfg.tables:
        weight = state[f"model.sparse_arch.embedding_bag_collection.embedding_bags.{table.name}.weight"]
        assert weight.shape == (table.num_embeddings(module.counts), module.cfg.embedding_dim)
        assert torch.count_nonzero(weight) > 0


def test_state_read_from_a_sharded_checkpoint_equals_the_trained_modules(
    trained: tuple[dict[str, Any], DLRMLitModule], tmp_path: Path
) -> None:
    # What a multi-process run registers: the model part of the DCP checkpoint, optimizer state beside it.
    _, module = trained
    folder = tmp_path / "ckpt"
    save_sharded(folder, module, module.trainer.optimizers)
    state = full_state_from_checkpoint(folder)
    expected = unsharded_state_dict(module)
    assert state.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)


def test_a_checkpoint_of_another_model_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "linear"
    save_sharded(folder, torch.nn.Linear(2, 1))  # weights, but not a DLRMLitModule's ranker
    with pytest.raises(RuntimeError, match="no 'model' ranker weights"):
        full_state_from_checkpoint(folder)
