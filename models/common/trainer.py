"""The Lightning ``Trainer`` of every model family, built from the ``trainer`` config group."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from recsys.errors import ConfigError
from recsys.settings import GPU_ACCELERATORS, TrainerConfig

GPU_INSTALL_DOC = "docs/install.md#gpu"


def require_accelerator(trainer: TrainerConfig) -> None:
    """Stop before any work when the trainer asks for GPUs this machine does not have: Lightning would fail
    later, inside the training processes, with a traceback that does not say what to change.

    Raises:
        ConfigError: ``trainer=gpu`` without a visible CUDA device, or fewer devices than ``trainer.devices``.
    """
    if trainer.accelerator not in GPU_ACCELERATORS:
        return
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible >= trainer.devices:
        return
    build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
    raise ConfigError(
        f"trainer.accelerator={trainer.accelerator!r} with trainer.devices={trainer.devices} needs "
        f"{trainer.devices} CUDA GPU(s); torch {torch.__version__} ({build}) sees {visible}. "
        f"Here use trainer=cpu or trainer=ddp_cpu; for GPUs install the CUDA builds ({GPU_INSTALL_DOC})."
    )


def build_trainer(trainer: TrainerConfig, **kwargs: Any) -> pl.Trainer:
    """A ``pl.Trainer`` with the ``trainer`` group's settings (``accelerator``, ``devices``, ``num_nodes``,
    ``check_val_every_n_epoch``, ``limit_{train,val,test}_batches``, ``log_every_n_steps``).

    Args:
        trainer: the typed group, ``recsys.config.typed(TrainerConfig, cfg["trainer"], "trainer")``.
        **kwargs: what the model family decides (``strategy``, ``max_epochs``, ``logger``, ``callbacks``,
            ...); a key the group also sets overrides the group's value (e.g. ``devices=1`` for a
            single-process family, ``limit_val_batches=0`` for a fit without validation).
    """
    require_accelerator(trainer)
    settings: dict[str, Any] = {
        "accelerator": trainer.accelerator,
        "devices": trainer.devices,
        "num_nodes": trainer.num_nodes,
        "check_val_every_n_epoch": trainer.check_val_every_n_epoch,
        "limit_train_batches": trainer.limit_train_batches,
        "limit_val_batches": trainer.limit_val_batches,
        "limit_test_batches": trainer.limit_test_batches,
        "log_every_n_steps": trainer.log_every_n_steps,
    }
    return pl.Trainer(**{**settings, **kwargs})
