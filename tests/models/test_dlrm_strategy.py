"""``TorchRecStrategy`` thins out Lightning's per-step SIGTERM broadcast to every N-th training step."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from models.dlrm.module import DLRMLitModule
from models.dlrm.strategy import SIGTERM_BROADCAST, EveryNthCall, TorchRecStrategy
from tests.models.test_dlrm_network import COUNTS, identity_collate, make_batches, make_config


def test_every_nth_call_runs_the_function_on_multiples_of_n_only() -> None:
    ran: list[int] = []
    throttled = EveryNthCall(lambda: ran.append(throttled.calls), every_n=3)
    for _ in range(10):
        throttled()
    assert ran == [3, 6, 9]
    with pytest.raises(ValueError, match="every_n=0"):
        EveryNthCall(lambda: None, every_n=0)
    with pytest.raises(ValueError, match="sigterm_broadcast_every_n_steps=0"):
        TorchRecStrategy(sigterm_broadcast_every_n_steps=0)


class _Linear(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (x,) = batch
        return self.layer(x).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(strategy: TorchRecStrategy, steps: int) -> pl.Trainer:
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=strategy,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(_Linear(), DataLoader(TensorDataset(torch.randn(steps * 4, 2)), batch_size=4))
    return trainer


def test_fit_wraps_the_epoch_loops_sigterm_broadcast() -> None:
    trainer = _fit(TorchRecStrategy(sigterm_broadcast_every_n_steps=5), steps=7)
    wrapped = getattr(trainer.fit_loop.epoch_loop, SIGTERM_BROADCAST)
    assert isinstance(wrapped, EveryNthCall) and wrapped.every_n == 5
    # Lightning's own broadcast (kept as the wrapped function) is the bound method of the loop
    assert wrapped.function.__self__ is trainer.fit_loop.epoch_loop  # type: ignore[attr-defined]


def test_every_step_leaves_lightnings_broadcast_alone() -> None:
    trainer = _fit(TorchRecStrategy(sigterm_broadcast_every_n_steps=1), steps=2)
    assert not isinstance(getattr(trainer.fit_loop.epoch_loop, SIGTERM_BROADCAST), EveryNthCall)


def test_a_batch_already_on_the_device_is_handed_over_as_it_is() -> None:
    cfg = make_config()
    module = DLRMLitModule(cfg, COUNTS)
    [batch] = make_batches(cfg, n=1, seed=3)
    cpu = torch.device("cpu")
    assert module.transfer_batch_to_device(batch, cpu, 0) is batch
    # anything else goes through Lightning's generic move
    moved = module.transfer_batch_to_device({"x": torch.ones(2)}, cpu, 0)
    assert torch.equal(moved["x"], torch.ones(2))


class _MetricsRecorder(Logger):
    """A logger that keeps the ``(step, metrics)`` the trainer hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[tuple[int, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append((int(step or 0), dict(metrics)))


def _train_losses(steps: int, every: int) -> list[tuple[int, float]]:
    cfg = make_config()
    recorder = _MetricsRecorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=TorchRecStrategy(),
        max_steps=steps,
        logger=recorder,
        log_every_n_steps=every,
        limit_val_batches=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(make_batches(cfg, n=steps, seed=5), batch_size=None, collate_fn=identity_collate)  # type: ignore[arg-type]
    torch.manual_seed(0)  # the tables and dense weights are initialised inside fit (configure_model)
    trainer.fit(DLRMLitModule(cfg, COUNTS), loader)
    return [(step, metrics["train/loss"]) for step, metrics in recorder.logged if "train/loss" in metrics]


def test_train_loss_reaches_the_logger_at_the_same_steps_as_logging_every_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The module skips self.log on steps the trainer does not hand to its loggers; nothing logged is lost.
    gated = _train_losses(steps=11, every=3)
    monkeypatch.setattr(DLRMLitModule, "_logs_this_step", lambda self: True)
    every_step = _train_losses(steps=11, every=3)
    # same steps and the loss of that very step (training is seeded, so both runs compute the same losses)
    assert gated == every_step
    assert [step for step, _ in gated] == [2, 5, 8]  # the 3rd, 6th and 9th of 11 steps, counted from 0
