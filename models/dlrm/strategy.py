"""A Lightning strategy for TorchRec's ``DistributedModelParallel``: DDP's process handling, no DDP wrapper.

DMP already shards the tables and data-parallelises the dense part, so wrapping it once more in DDP would
all-reduce table gradients that the fused optimizer has consumed (and fail on sharded parameters). This
strategy keeps everything else from ``DDPStrategy`` (process group, launch, ranks, reduce, barrier) and
writes checkpoints with ``torch.distributed.checkpoint`` so no rank's table shards are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from models.dlrm.checkpoint import MODEL_KEY, OPTIMIZERS_KEY, load_sharded, save_sharded

GLOO, NCCL = "gloo", "nccl"


class TorchRecStrategy(DDPStrategy):
    """``DDPStrategy`` minus the DDP wrapper, plus sharded (DCP) checkpoints.

    The process group backend is gloo on CPU and NCCL on CUDA unless ``process_group_backend`` is given.
    Checkpoint paths are folders. Works with ``Trainer(accelerator="cpu", devices=1 or 2, strategy=...)``,
    launched by Lightning or by torchrun / ``elastic_launch`` (then Lightning starts no processes itself).

    Args:
        **kwargs: passed to ``DDPStrategy`` (e.g. ``process_group_backend``, ``timeout``).
    """

    strategy_name = "torchrec"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    @override
    def _get_process_group_backend(self) -> str:
        if self._process_group_backend is not None:
            return self._process_group_backend
        return NCCL if self.root_device.type == "cuda" else GLOO

    @property
    @override
    def restore_checkpoint_after_setup(self) -> bool:
        # Optimizers must exist before a sharded checkpoint can be loaded into them in place.
        return True

    @override
    def setup(self, trainer: pl.Trainer) -> None:
        assert self.accelerator is not None
        assert self.model is not None
        self.accelerator.setup(trainer)
        # DMP placed each shard and the dense part on this rank's device and broadcast the dense weights;
        # DDP's module sync would overwrite rank-local table shards, so neither DDP nor the sync run here.
        self.model_to_device()
        if trainer.state.fn == TrainerFn.FITTING:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()

    @override
    def teardown(self) -> None:
        # Unlike DDP, leave the model and optimizers where DMP put them: moving FBGEMM tables to CPU at the
        # end of fit() would break a CUDA model that is used again (validate, test, predict, more steps).
        assert self.cluster_environment is not None
        assert self.accelerator is not None
        self.cluster_environment.teardown()
        self.precision_plugin.teardown()
        self.accelerator.teardown()
        self.checkpoint_io.teardown()

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: _PATH, storage_options: Any | None = None
    ) -> None:
        """Write the sharded model and optimizer states to the folder ``filepath`` (collective)."""
        assert self.lightning_module is not None
        metadata = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer_states")}
        optimizers = self.optimizers if "optimizer_states" in checkpoint else []
        save_sharded(filepath, self.lightning_module, optimizers, metadata=metadata)

    @override
    def load_checkpoint(self, checkpoint_path: _PATH, weights_only: bool | None = None) -> dict[str, Any]:
        """Load a ``save_checkpoint`` folder in place (model and, when fitting, optimizers) on every rank."""
        assert self.lightning_module is not None
        loaded = load_sharded(checkpoint_path, self.lightning_module, self.optimizers)
        loaded["state_dict"] = loaded.pop(MODEL_KEY)
        loaded["optimizer_states"] = list(loaded.pop(OPTIMIZERS_KEY).values())
        return loaded

    @override
    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        """No-op: ``load_checkpoint`` already loaded the shards in place."""

    @override
    def load_optimizer_state_dict(self, checkpoint: Mapping[str, Any]) -> None:
        """No-op: ``load_checkpoint`` already loaded the optimizer states in place."""
