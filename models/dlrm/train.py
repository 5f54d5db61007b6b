"""``recsys train model=dlrm``: Lightning fits the sharded DLRM on the features stage's CTR samples, tests
it, logs curves and AUC / GAUC / LogLoss into one MLflow run, registers the scoring pyfunc and publishes the
whole ranker (full-tensor weights, config, table sizes) under ``train/<model>`` for the ``rerank`` stage."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from models.common.trainer import build_trainer
from models.dlrm.candidates import write_ranker_dataset
from models.dlrm.config import DLRMConfig
from models.dlrm.data import CTRDataModule
from models.dlrm.module import DLRMLitModule
from models.dlrm.pyfunc import full_state_from_checkpoint, log_dlrm, save_artifacts
from models.dlrm.strategy import TorchRecStrategy
from models.dlrm.two_stage import rerank_stage
from recsys.allocator import apply_malloc_settings
from recsys.config import typed
from recsys.console import print_table
from recsys.manifest import MANIFEST_FILE, Manifest, publish_atomically, read_manifest, write_manifest
from recsys.paths import TRAIN, RunPaths
from recsys.settings import TrainerConfig
from recsys.stage import ModelFamily, StageResult
from recsys.tables import read_arrow
from recsys.tracking.registry import Registration, register_and_gate
from recsys.tracking.runs import lightning_logger, log_metrics, tracked_run

CTR_OUTPUT = "ctr"
CANDIDATES_OUTPUT = "candidates"
"""Scratch folder (under ``_work/train/<model>``) of a candidate ranker's lists."""
DATASET_WAIT_SECONDS = 1800
"""How long a non-zero rank waits for rank 0 to publish the candidate lists."""
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
    # The published ranker (rank 0 only; None on the other ranks of a multi-process run).
    published: Path | None = None


def train_stage(cfg: Mapping[str, Any]) -> StageResult:
    """The family's ``train`` stage (every rank of a multi-process run calls it; rank 0's result counts)."""
    result = run_train(cfg)
    metrics = dict(result.test_metrics)
    # Proof of the process count the trainer really ran with (not just what was asked for).
    metrics["train.world_size"] = float(result.trainer.world_size)
    outputs = () if result.published is None else (result.published,)
    return StageResult(metrics, result.run_id or None, outputs)


def training_rows(cfg: Mapping[str, Any], paths: RunPaths, model_cfg: DLRMConfig) -> Path:
    """The folder of rows the ranker trains on: the features' CTR samples, or (``task: candidates``) the
    retriever's candidate lists, built by rank 0 into the model's scratch folder (the other ranks wait)."""
    if model_cfg.task != "candidates":
        return paths.features / CTR_OUTPUT
    folder = paths.work(TRAIN, model_cfg.name) / CANDIDATES_OUTPUT
    if launch_rank() == 0:
        return write_ranker_dataset(cfg, model_cfg, folder)
    deadline = time.monotonic() + DATASET_WAIT_SECONDS
    while not (folder / MANIFEST_FILE).is_file():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{folder}: rank 0 did not publish the candidate lists in time.")
        time.sleep(1.0)
    return folder


def run_train(cfg: Mapping[str, Any]) -> TrainResult:
    paths = RunPaths.from_cfg(cfg)
    model_cfg = typed(DLRMConfig, cfg["model"], "model")
    folder = training_rows(cfg, paths, model_cfg)
    monitor = model_cfg.monitor
    # Every rank runs this (Lightning's own launcher reruns the command per rank), before any big tensor.
    apply_malloc_settings(model_cfg.malloc)
    pl.seed_everything(int(cfg["seed"]), workers=True)
    datamodule = CTRDataModule(
        folder, model_cfg, seed=int(cfg["seed"]), shuffle_buffer_rows=model_cfg.shuffle_buffer_rows
    )
    module = DLRMLitModule(model_cfg, datamodule.counts)
    trainer_cfg = typed(TrainerConfig, cfg["trainer"], "trainer")
    # One MLflow run per training: only the first process opens it (the others log nothing anyway).
    tracking = (
        tracked_run(cfg, run_name=f"train-{model_cfg.name}", tags={"model": model_cfg.name, "stage": "train"})
        if launch_rank() == 0
        else contextlib.nullcontext(None)
    )
    with tracking as run:
        run_id = run.info.run_id if run is not None else ""
        logger = lightning_logger(cfg, run_id) if run is not None else False
        checkpoints = checkpoint_dir(paths, model_cfg)
        best = ModelCheckpoint(dirpath=checkpoints, monitor=monitor, mode="max", save_top_k=1)
        callbacks: list[pl.Callback] = [ReshuffleEachEpoch(datamodule), best]
        if model_cfg.early_stopping_patience is not None:
            callbacks.append(
                EarlyStopping(monitor=monitor, mode="max", patience=model_cfg.early_stopping_patience)
            )
        trainer = build_trainer(
            trainer_cfg,
            strategy=TorchRecStrategy(
                sigterm_broadcast_every_n_steps=model_cfg.sigterm_broadcast_every_n_steps
            ),
            max_epochs=model_cfg.epochs,
            logger=logger,
            callbacks=callbacks,
            enable_model_summary=False,
        )
        trainer.fit(module, datamodule=datamodule)
        # The sharded (DCP) checkpoint of the best validation epoch, loaded in place on every rank.
        best_path = best.best_model_path or None
        [test] = trainer.test(module, datamodule=datamodule, ckpt_path=best_path, verbose=False)
        metrics = {str(k): float(v) for k, v in test.items()}
        if best.best_model_score is not None:
            best_key = "best/" + monitor.replace("/", "_")
            metrics[best_key] = float(best.best_model_score)
            if run is not None:
                log_metrics({best_key: metrics[best_key]})
        rows = [(k, f"{v:.4f}") for k, v in sorted(metrics.items())]
        weights: DLRMLitModule | dict[str, Any] | None = module
        if trainer.world_size > 1:
            # Each rank holds only its table shards; the sharded checkpoint holds them all.
            if best_path is None:
                best_path = str(checkpoints / FINAL_CHECKPOINT)
                trainer.save_checkpoint(best_path)  # collective
            weights = full_state_from_checkpoint(best_path) if trainer.is_global_zero else None
        published: Path | None = None
        if weights is not None:
            registration = _register(cfg, weights, model_cfg, datamodule, folder, run_id)
            rows.append(("registered", f"{registration.name} v{registration.version}"))
            rows.append(("champion?", f"{registration.decision.promote} ({registration.decision.reason})"))
            published = _publish(paths, weights, model_cfg, datamodule.counts, folder, run_id, metrics)
            rows.append(("published", str(published)))
    print_table(f"{model_cfg.name}: test", ["metric", "value"], rows)
    return TrainResult(run_id, metrics, trainer, module, published)


def launch_rank() -> int:
    """This process's global rank as set by the launcher (torchrun / elastic_launch: RANK; Lightning's own
    subprocess launcher: LOCAL_RANK on one node); 0 when nothing launched it."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def checkpoint_dir(paths: RunPaths, model_cfg: DLRMConfig) -> Path:
    """The training's scratch ``checkpoints`` folder, emptied first: a stale best epoch from an earlier run on
    this snapshot must never be restored into this one. Every rank computes the same folder."""
    folder = paths.work(TRAIN, model_cfg.name) / "checkpoints"
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
    return register_and_gate(
        info.model_uri, name, run_id, promotion_metric(model_cfg), eval_set, internal=INTERNAL_SCORER
    )


# The scorer reads the features stage's encoded rows (user_idx, item_idx, ctr and recency features);
# a client has raw ids and a history, which is what the two-stage recommender takes.
INTERNAL_SCORER = (
    "scores the encoded CTR feature rows the features stage writes (user_idx, item_idx, ... as in its "
    "signature); clients call the two-stage recommender (recsys-recommender: raw user id + item history)."
)


def promotion_metric(model_cfg: DLRMConfig) -> str:
    """The gate compares challengers on the test value of the metric that picked their best epoch."""
    return model_cfg.monitor.replace("val/", "test/", 1)


def _publish(
    paths: RunPaths,
    weights: DLRMLitModule | Mapping[str, Any],
    model_cfg: DLRMConfig,
    counts: Mapping[str, int],
    ctr: Path,
    run_id: str,
    metrics: Mapping[str, float],
) -> Path:
    """``train/<model>/``: the whole ranker as the pyfunc's artifacts (config, table sizes, full-tensor
    weights), what the ``rerank`` stage scores candidates with."""
    out = paths.train(model_cfg.name)
    manifest = read_manifest(ctr)
    with publish_atomically(out) as staging:
        files = save_artifacts(weights, model_cfg, counts, staging)
        write_manifest(
            staging,
            Manifest(
                TRAIN,
                0,
                [],
                dict(counts),
                config_hash=manifest.config_hash,
                source_fingerprint=manifest.source_fingerprint,
                format="model",
                extra={
                    "model": model_cfg.name,
                    "family": "dlrm",
                    "run_id": run_id,
                    "artifacts": {k: Path(v).name for k, v in files.items()},
                    "metrics": dict(metrics),
                },
            ),
        )
    return out


FAMILY = ModelFamily("dlrm", train=train_stage, rerank=rerank_stage)
"""The DLRM family's stages: ``train`` and ``rerank`` (two-stage metrics over a retriever's candidates)."""
