"""The Lightning ``Trainer`` of every model family, built from the ``trainer`` config group."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from recsys.settings import TrainerConfig


def build_trainer(trainer: TrainerConfig, **kwargs: Any) -> pl.Trainer:
    """A ``pl.Trainer`` with the ``trainer`` group's settings (``accelerator``, ``devices``,
    ``check_val_every_n_epoch``, ``limit_{train,val,test}_batches``, ``log_every_n_steps``).

    Args:
        trainer: the typed group, ``recsys.config.typed(TrainerConfig, cfg["trainer"], "trainer")``.
        **kwargs: what the model family decides (``strategy``, ``max_epochs``, ``logger``, ``callbacks``,
            ...); a key the group also sets overrides the group's value (e.g. ``devices=1`` for a
            single-process family, ``limit_val_batches=0`` for a fit without validation).
    """
    settings: dict[str, Any] = {
        "accelerator": trainer.accelerator,
        "devices": trainer.devices,
        "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
        "limit_train_batches": trainer.limit_train_batches,
        "limit_val_batches": trainer.limit_val_batches,
        "limit_test_batches": trainer.limit_test_batches,
        "log_every_n_steps": trainer.log_every_n_steps,
    }
    return pl.Trainer(**{**settings, **kwargs})
