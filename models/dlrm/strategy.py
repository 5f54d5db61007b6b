"""A Lightning strategy for TorchRec's ``DistributedModelParallel``: DDP's process handling, no DDP wrapper.

DMP already shards the tables and data-parallelises the dense part, so wrapping it once more in DDP would
all-reduce table gradients that the fused optimizer has consumed (and fail on sharded parameters). This
strategy keeps everything else from ``DDPStrategy`` (process group, launch, ranks, reduce, barrier) and
writes checkpoints with ``torch.distributed.checkpoint`` so no rank's table shards are dropped.

It also thins out Lightning's per-step SIGTERM broadcast. Lightning 2.6 broadcasts a one-element "did rank 0
get SIGTERM" tensor before every training step of a multi-process run (Lightning-AI/pytorch-lightning#20825;
the cost is issue #21487, an option for it is the open PR #21640). That is one more blocking collective per
step on top of TorchRec's all-to-alls: on 2 gloo processes it cost about 10 ms of a 45 ms DLRM step
(``recsys bench dlrm``). With ``sigterm_broadcast_every_n_steps=N`` every rank makes that broadcast on the
same steps, every N-th one, so a SIGTERM on rank 0 still stops all ranks together, at most N - 1 steps later
(rank 0 itself stops at the end of the step it got the signal in, as before).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from models.dlrm.checkpoint import MODEL_KEY, OPTIMIZERS_KEY, load_sharded, save_sharded

GLOO, NCCL = "gloo", "nccl"
SIGTERM_BROADCAST = "_broadcast_sigterm_tensor"
"""Lightning's per-step SIGTERM broadcast on the training epoch loop (absent in versions without it)."""


class EveryNthCall:
    """Runs ``function`` on the N-th, 2N-th, ... call only; the other calls do nothing.

    Every rank calls it once per training step, so every rank runs ``function`` (a collective) on the same
    steps.
    """

    def __init__(self, function: Callable[[], None], every_n: int) -> None:
        if every_n < 1:
            raise ValueError(f"every_n={every_n}: must be at least 1")
        self.function = function
        self.every_n = every_n
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.calls % self.every_n == 0:
            self.function()


class TorchRecStrategy(DDPStrategy):
    """``DDPStrategy`` minus the DDP wrapper, plus sharded (DCP) checkpoints.

    The process group backend is gloo on CPU and NCCL on CUDA unless ``process_group_backend`` is given.
    Checkpoint paths are folders. Works with ``Trainer(accelerator="cpu", devices=1 or 2, strategy=...)``,
    launched by Lightning or by torchrun / ``elastic_launch`` (then Lightning starts no processes itself).

    Args:
        sigterm_broadcast_every_n_steps: how often Lightning's SIGTERM broadcast runs in multi-process
            training (1 = every step, Lightning's own behaviour); see the module docstring.
        **kwargs: passed to ``DDPStrategy`` (e.g. ``process_group_backend``, ``timeout``).
    """

    strategy_name = "torchrec"

    def __init__(self, sigterm_broadcast_every_n_steps: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if sigterm_broadcast_every_n_steps < 1:
            raise ValueError(
                f"sigterm_broadcast_every_n_steps={sigterm_broadcast_every_n_steps}: must be at least 1"
            )
        self.sigterm_broadcast_every_n_steps = sigterm_broadcast_every_n_steps

    @override
    def on_train_start(self) -> None:
        super().on_train_start()
        if self.sigterm_broadcast_every_n_steps == 1 or self.lightning_module is None:
            return
        loop = self.lightning_module.trainer.fit_loop.epoch_loop
        broadcast = getattr(loop, SIGTERM_BROADCAST, None)
        if callable(broadcast) and not isinstance(broadcast, EveryNthCall):
            setattr(loop, SIGTERM_BROADCAST, EveryNthCall(broadcast, self.sigterm_broadcast_every_n_steps))

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
