"""``recsys bench sequential``: seconds per training epoch and sequences/s of SASRec on the snapshot's
sequences (MovieLens-100K by default, see docs/benchmarks.md), our Lightning training against a plain
PyTorch loop over the same network, batches and optimizer in the same process (the ratio is the Lightning
overhead), plus Molar.

Validation is off in both engines: the numbers are pure training epochs (full softmax loss, backward, Adam).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from models.sequential.config import SequentialBenchSettings, SequentialConfig
from models.sequential.data import SequenceData, SequenceDataModule, load_sequences
from models.sequential.module import SequentialLitModule
from models.sequential.network import build_network
from models.sequential.train import content_matrix, set_threads
from recsys.config import compose, to_plain, typed
from recsys.console import step
from recsys.offline import load_interactions
from recsys.paths import RunPaths


class _EpochTimer(pl.Callback):
    """Wall and process-CPU seconds per epoch (CPU time shows the cost when the machine is shared)."""

    def __init__(self) -> None:
        self.seconds: list[tuple[float, float]] = []
        self._start = (0.0, 0.0)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = (time.perf_counter(), time.process_time())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        wall, cpu = self._start
        self.seconds.append((time.perf_counter() - wall, time.process_time() - cpu))


def _module(
    model_cfg: SequentialConfig, data: SequenceData, counts: np.ndarray, content: Any, seed: int
) -> SequentialLitModule:
    torch.manual_seed(seed)
    return SequentialLitModule(model_cfg, build_network(model_cfg, data.num_items, content), counts)


def lightning_epochs(
    module: SequentialLitModule, datamodule: SequenceDataModule, epochs: int
) -> list[tuple[float, float]]:
    """(Wall, CPU) seconds of each training epoch under ``pl.Trainer`` (no validation, logs, checkpoints)."""
    timer = _EpochTimer()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=False,
        callbacks=[timer],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=datamodule.train_dataloader())
    return timer.seconds


def plain_epochs(
    module: SequentialLitModule, datamodule: SequenceDataModule, epochs: int
) -> list[tuple[float, float]]:
    """(Wall, CPU) seconds per epoch of the reference loop: same loss, optimizer, batches; no framework."""
    optimizer = module.build_optimizer()
    module.train()
    seconds = []
    for _ in range(epochs):
        start, cpu = time.perf_counter(), time.process_time()
        for (sequences,) in datamodule.train_dataloader():
            loss, _ = module.compute_loss(sequences)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        seconds.append((time.perf_counter() - start, time.process_time() - cpu))
    return seconds


def run_sequential_bench(cfg: Mapping[str, Any]) -> dict[str, Any]:
    settings = typed(SequentialBenchSettings, cfg["bench"], "bench")
    threads = set_threads(settings.num_threads)
    features = RunPaths.from_cfg(cfg).features
    interactions = load_interactions(features)
    seed = int(cfg["seed"])
    timings: list[dict[str, Any]] = []
    overrides = [f"paths.root={cfg['paths']['root']}", f"run.date={cfg['run']['date']}"]
    for name in settings.models:
        full_cfg = to_plain(compose([*overrides, f"data={cfg['data']['name']}", f"model={name}"]))
        model_cfg = typed(SequentialConfig, full_cfg["model"], "model")
        data = load_sequences(features, model_cfg.max_len)
        content = content_matrix(full_cfg, model_cfg)
        datamodule = SequenceDataModule(
            data, model_cfg.batch_size, model_cfg.eval_batch_size, seed, model_cfg.bucket_by_length
        )
        sequences = data.train.shape[0]
        engines = [("lightning", lightning_epochs)]
        if name == settings.models[0]:
            engines.append(("plain PyTorch loop", plain_epochs))
        measured: dict[str, float] = {}
        for engine, epochs_fn in engines:
            module = _module(model_cfg, data, interactions.item_popularity, content, seed)
            with step(f"{name}: {settings.epochs} epochs, {engine}, {threads} threads"):
                seconds = epochs_fn(module, datamodule, settings.epochs)
            # the first epoch pays one-off costs (allocator, lazy init); report the median of the rest
            timed = np.array(seconds[1:] if len(seconds) > 1 else seconds)
            per_epoch, cpu_per_epoch = (float(v) for v in np.median(timed, axis=0))
            measured[engine] = per_epoch
            timings.append(
                {
                    "engine": f"{name} {engine}",
                    "step": "train epoch",
                    "seconds": per_epoch,
                    "samples_per_s": sequences / per_epoch,
                    "cpu_seconds": cpu_per_epoch,
                    "epochs_wall_cpu": seconds,
                }
            )
        if "plain PyTorch loop" in measured:
            reference = measured["plain PyTorch loop"]
            for row in timings:
                if row["engine"].startswith(f"{name} "):
                    # samples/s over the plain loop's samples/s, as in the DLRM bench: < 1 = Lightning slower
                    row["ratio"] = reference / row["seconds"]
    load = os.getloadavg()
    return {
        "timings": timings,
        "threads": threads,
        "train_sequences": int(data.train.shape[0]),
        "train_targets": int((data.train[:, 1:] > 0).sum()),
        "load_average_1_5_15": list(load),
        "settings": {"models": list(settings.models), "epochs": settings.epochs},
    }
