"""``recsys train model=dlrm``: Lightning fits the sharded DLRM on the features stage's CTR samples,
tests it, and logs curves and AUC / GAUC / LogLoss into one MLflow run."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import MLFlowLogger

from models.dlrm.config import DLRMConfig
from models.dlrm.data import CTRDataModule
from models.dlrm.module import DLRMLitModule
from models.dlrm.strategy import TorchRecStrategy
from recsys.console import print_table
from recsys.paths import stage_dir
from recsys.tracking.runs import tracked_run

CTR_OUTPUT = "ctr"


class ReshuffleEachEpoch(pl.Callback):
    """Iterable datasets get no ``set_epoch`` from Lightning; without this every epoch sees one order."""

    def __init__(self, datamodule: CTRDataModule) -> None:
        self.datamodule = datamodule

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.datamodule.set_epoch(trainer.current_epoch)


@dataclass
class TrainResult:
    run_id: str
    test_metrics: dict[str, float]
    trainer: pl.Trainer
    module: DLRMLitModule


def run_train(cfg: Mapping[str, Any]) -> TrainResult:
    root = Path(cfg["paths"]["root"]).resolve()
    folder = stage_dir(root, str(cfg["run"]["date"]), "features") / CTR_OUTPUT
    model_cfg = DLRMConfig.from_mapping(cfg["model"])
    pl.seed_everything(int(cfg["seed"]), workers=True)
    datamodule = CTRDataModule(
        folder, model_cfg, seed=int(cfg["seed"]), shuffle_buffer_rows=model_cfg.shuffle_buffer_rows
    )
    module = DLRMLitModule(model_cfg, datamodule.counts)
    trainer_cfg = cfg["trainer"]
    with tracked_run(
        cfg, run_name=f"train-{model_cfg.name}", tags={"model": model_cfg.name, "stage": "train"}
    ) as run:
        logger = MLFlowLogger(
            experiment_name=str(cfg["tracking"]["experiment"]),
            tracking_uri=str(cfg["tracking"]["tracking_uri"]),
            run_id=run.info.run_id,
        )
        trainer = pl.Trainer(
            accelerator=str(trainer_cfg["accelerator"]),
            devices=int(trainer_cfg["devices"]),
            strategy=TorchRecStrategy(),
            max_epochs=model_cfg.epochs,
            logger=logger,
            callbacks=[ReshuffleEachEpoch(datamodule)],
            enable_checkpointing=False,
            check_val_every_n_epoch=int(trainer_cfg["check_val_every_n_epoch"]),
            limit_train_batches=trainer_cfg["limit_train_batches"],
            limit_val_batches=trainer_cfg["limit_val_batches"],
            limit_test_batches=trainer_cfg["limit_test_batches"],
            log_every_n_steps=int(trainer_cfg["log_every_n_steps"]),
            enable_model_summary=False,
        )
        trainer.fit(module, datamodule=datamodule)
        [test] = trainer.test(module, datamodule=datamodule, verbose=False)
    metrics = {str(k): float(v) for k, v in test.items()}
    print_table(
        f"{model_cfg.name}: test", ["metric", "value"], [(k, f"{v:.4f}") for k, v in sorted(metrics.items())]
    )
    return TrainResult(run.info.run_id, metrics, trainer, module)
