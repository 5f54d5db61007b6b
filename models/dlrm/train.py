"""``recsys train model=dlrm``: Lightning fits the sharded DLRM on the features stage's CTR samples,
tests it, and logs curves and AUC / GAUC / LogLoss into one MLflow run."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import mlflow
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import MLFlowLogger

from models.dlrm.config import DLRMConfig
from models.dlrm.data import CTRDataModule
from models.dlrm.module import DLRMLitModule
from models.dlrm.pyfunc import CPUScorer, full_state_from_checkpoint, log_dlrm
from models.dlrm.rerank import Ranker, two_stage_evaluation
from models.dlrm.strategy import TorchRecStrategy
from recsys.allocator import MallocSettings, apply_malloc_settings
from recsys.console import console, print_table
from recsys.manifest import read_manifest
from recsys.paths import stage_dir
from recsys.tables import read_arrow
from recsys.tracking.registry import Registration, register_and_gate
from recsys.tracking.runs import tracked_run

CTR_OUTPUT = "ctr"
PROMOTION_METRIC = "test/auc"
MONITOR = "val/auc"
"""Validation metric that picks the best epoch (restored before testing) and drives early stopping."""
RETRIEVER = "puresvd"
# Rows of the CTR output stored as the pyfunc's input example.
EXAMPLE_ROWS = 5
FINAL_CHECKPOINT = "final"
"""Sharded checkpoint written at the end of a multi-process run without a best-validation one (to export)."""


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
    # Every rank runs this (Lightning's own launcher reruns the command per rank), before any big tensor.
    apply_malloc_settings(MallocSettings.from_config(cfg["trainer"]))
    pl.seed_everything(int(cfg["seed"]), workers=True)
    datamodule = CTRDataModule(
        folder, model_cfg, seed=int(cfg["seed"]), shuffle_buffer_rows=model_cfg.shuffle_buffer_rows
    )
    module = DLRMLitModule(model_cfg, datamodule.counts)
    trainer_cfg = cfg["trainer"]
    # One MLflow run per training: only the first process opens it (the others log nothing anyway).
    tracking = (
        tracked_run(cfg, run_name=f"train-{model_cfg.name}", tags={"model": model_cfg.name, "stage": "train"})
        if launch_rank() == 0
        else contextlib.nullcontext(None)
    )
    with tracking as run:
        run_id = run.info.run_id if run is not None else ""
        logger: MLFlowLogger | bool = (
            MLFlowLogger(
                experiment_name=str(cfg["tracking"]["experiment"]),
                tracking_uri=str(cfg["tracking"]["tracking_uri"]),
                run_id=run_id,
            )
            if run is not None
            else False
        )
        checkpoints = checkpoint_dir(cfg, model_cfg)
        best = ModelCheckpoint(dirpath=checkpoints, monitor=MONITOR, mode="max", save_top_k=1)
        callbacks: list[pl.Callback] = [ReshuffleEachEpoch(datamodule), best]
        if model_cfg.early_stopping_patience is not None:
            callbacks.append(
                EarlyStopping(monitor=MONITOR, mode="max", patience=model_cfg.early_stopping_patience)
            )
        trainer = pl.Trainer(
            accelerator=str(trainer_cfg["accelerator"]),
            devices=int(trainer_cfg["devices"]),
            strategy=TorchRecStrategy(
                sigterm_broadcast_every_n_steps=int(trainer_cfg["sigterm_broadcast_every_n_steps"])
            ),
            max_epochs=model_cfg.epochs,
            logger=logger,
            callbacks=callbacks,
            check_val_every_n_epoch=int(trainer_cfg["check_val_every_n_epoch"]),
            limit_train_batches=trainer_cfg["limit_train_batches"],
            limit_val_batches=trainer_cfg["limit_val_batches"],
            limit_test_batches=trainer_cfg["limit_test_batches"],
            log_every_n_steps=int(trainer_cfg["log_every_n_steps"]),
            enable_model_summary=False,
        )
        trainer.fit(module, datamodule=datamodule)
        # The sharded (DCP) checkpoint of the best validation epoch, loaded in place on every rank.
        best_path = best.best_model_path or None
        [test] = trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
        metrics = {str(k): float(v) for k, v in test.items()}
        if best.best_model_score is not None:
            metrics["best/val_auc"] = float(best.best_model_score)
            if isinstance(logger, MLFlowLogger):
                logger.log_metrics({"best/val_auc": metrics["best/val_auc"]})
        rows = [(k, f"{v:.4f}") for k, v in sorted(metrics.items())]
        weights: DLRMLitModule | dict[str, Any] | None = module
        if trainer.world_size > 1:
            # Each rank holds only its table shards; the sharded checkpoint holds them all.
            if best_path is None:
                best_path = str(checkpoints / FINAL_CHECKPOINT)
                trainer.save_checkpoint(best_path)  # collective
            weights = full_state_from_checkpoint(best_path) if trainer.is_global_zero else None
        if weights is not None:
            registration = _register(cfg, weights, model_cfg, datamodule, folder, run_id)
            rows.append(("registered", f"{registration.name} v{registration.version}"))
            rows.append(("champion?", f"{registration.decision.promote} ({registration.decision.reason})"))
            two_stage = _two_stage(cfg, weights, model_cfg, datamodule.counts)
            metrics.update(two_stage)
            rows += [(k, f"{v:.4f}") for k, v in two_stage.items()]
    print_table(f"{model_cfg.name}: test", ["metric", "value"], rows)
    return TrainResult(run_id, metrics, trainer, module)


def launch_rank() -> int:
    """This process's global rank as set by the launcher (torchrun / elastic_launch: RANK; Lightning's own
    subprocess launcher: LOCAL_RANK on one node); 0 when nothing launched it."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def checkpoint_dir(cfg: Mapping[str, Any], model_cfg: DLRMConfig) -> Path:
    """``<root>/<date>/train/<model>/checkpoints``, emptied first: a stale best epoch from an earlier run on
    this snapshot must never be restored into this one. Every rank computes the same folder."""
    root = Path(cfg["paths"]["root"]).resolve()
    folder = stage_dir(root, str(cfg["run"]["date"]), "train") / model_cfg.name / "checkpoints"
    if launch_rank() == 0:
        shutil.rmtree(folder, ignore_errors=True)
    return folder


def _register(
    cfg: Mapping[str, Any],
    weights: DLRMLitModule | Mapping[str, Any],
    model_cfg: DLRMConfig,
    datamodule: CTRDataModule,
    folder: Path,
    run_id: str,
) -> Registration:
    """Log the scoring pyfunc into the training run and register it behind the promotion gate (test AUC)."""
    columns = [*model_cfg.sparse_features, *model_cfg.dense_features]
    example = read_arrow(folder, columns=columns).slice(0, EXAMPLE_ROWS).to_pandas()
    info = log_dlrm(weights, model_cfg, datamodule.counts, example)
    manifest = read_manifest(folder)
    eval_set = f"{manifest.source_fingerprint[:16]}-{manifest.config_hash[:16]}"
    name = f"{cfg['prefix']}-{model_cfg.name}"
    return register_and_gate(info.model_uri, name, run_id, PROMOTION_METRIC, eval_set)


def _two_stage(
    cfg: Mapping[str, Any],
    weights: DLRMLitModule | Mapping[str, Any],
    model_cfg: DLRMConfig,
    counts: Mapping[str, int],
) -> dict[str, float]:
    """Retriever candidates re-ranked by the DLRM, when this snapshot has an evaluated retriever.

    ``weights``: the trained module, or (after a multi-process run, on rank 0) the full-tensor state, from
    which a whole CPU ranker is built only once the retriever is known to be there.
    """
    root = Path(cfg["paths"]["root"]).resolve()
    vectors = stage_dir(root, str(cfg["run"]["date"]), "evaluate") / RETRIEVER / "item_vectors.npy"
    if not vectors.is_file():
        console.print(
            f"two-stage evaluation skipped: no {vectors} (run `recsys evaluate model={RETRIEVER}`)."
        )
        return {}
    ranker: Ranker = (
        weights if isinstance(weights, DLRMLitModule) else CPUScorer.from_state(model_cfg, counts, weights)
    )
    result = two_stage_evaluation(cfg, ranker, retriever=RETRIEVER)
    out = {
        "two_stage/retrieval_ndcg_at_10": result.retrieval_ndcg_at_10,
        "two_stage/reranked_ndcg_at_10": result.reranked_ndcg_at_10,
        "two_stage/candidate_recall": result.candidate_recall,
    }
    mlflow.log_metrics(out)
    return out
