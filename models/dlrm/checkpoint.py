"""Save and resume the full sharded DLRM state with ``torch.distributed.checkpoint`` (DCP).

Lightning's default checkpoint is one ``torch.save`` on rank 0, which keeps only rank 0's table shards and
silently drops the rest. DCP writes every rank's shards (tables, their fused row-wise Adagrad accumulators)
plus the replicated dense weights and Adam state into one folder, and loads them back in place into a model
sharded the same way (or re-sharded: DCP matches shards by global offsets). Every function here is collective:
call it on every rank.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper

METADATA_FILE = "trainer_state.pt"
"""Small replicated state (Lightning loops, epoch, callbacks) written by rank 0 beside the DCP shards."""
MODEL_KEY = "model"
OPTIMIZERS_KEY = "optimizers"


def init_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create lazily initialised optimizer state (Adam's moments) so DCP can load into it in place.

    Fused embedding optimizers own their state from the start; a torch optimizer such as Adam creates it on
    its first step, and ``KeyedOptimizer.load_state_dict`` refuses to load into empty state. A step with zero
    gradients creates it without moving any weight (Adam's update is 0 when both moments are 0).
    """
    if isinstance(optimizer, CombinedOptimizer):
        for _, inner in optimizer.optimizers:
            init_optimizer_state(inner)
    elif isinstance(optimizer, KeyedOptimizerWrapper) and not optimizer.state:
        optimizer.init_state()
        optimizer.zero_grad(set_to_none=True)


def load_model_state(module: nn.Module, state: Mapping[str, Any]) -> None:
    """``module.load_state_dict(state)`` that also works when DMPs are nested inside ``module``.

    A DMP's ``state_dict`` hides its wrapper prefixes (``_dmp_wrapped_module.module``) and only its own
    ``load_state_dict`` adds them back; a parent's ``load_state_dict`` would not, so each DMP loads its part.

    Raises:
        RuntimeError: on missing or unexpected keys.
    """
    if isinstance(module, DistributedModelParallel):
        module.load_state_dict(state)
        return
    dmp_prefixes = [
        f"{name}." for name, sub in module.named_modules() if isinstance(sub, DistributedModelParallel)
    ]
    rest = dict(state)
    for prefix in dmp_prefixes:
        sub_state = {k[len(prefix) :]: rest.pop(k) for k in list(rest) if k.startswith(prefix)}
        dmp = module.get_submodule(prefix[:-1])
        assert isinstance(dmp, DistributedModelParallel)
        dmp.load_state_dict(sub_state)
    result = module.load_state_dict(rest, strict=False)
    missing = [k for k in result.missing_keys if not any(k.startswith(p) for p in dmp_prefixes)]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"state_dict mismatch: missing {missing}, unexpected {result.unexpected_keys}")


def sharded_state_dict(module: nn.Module, optimizers: Sequence[torch.optim.Optimizer] = ()) -> dict[str, Any]:
    """``{"model": module.state_dict(), "optimizers": {"0": ..., ...}}`` with ShardedTensors for tables.

    Optimizers must be TorchRec ``KeyedOptimizer``s: their state is keyed by parameter name, not by position,
    which is what lets DCP match entries across runs.
    """
    for optimizer in optimizers:
        if not isinstance(optimizer, KeyedOptimizer):
            raise TypeError(f"sharded checkpoints need KeyedOptimizers, got {type(optimizer).__name__}")
    return {
        MODEL_KEY: module.state_dict(),
        OPTIMIZERS_KEY: {str(i): optimizer.state_dict() for i, optimizer in enumerate(optimizers)},
    }


def save_sharded(
    folder: str | Path,
    module: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer] = (),
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write every rank's shards, the dense weights and the optimizer states to ``folder`` (collective).

    Args:
        folder: checkpoint folder (created); DCP writes one file per rank plus ``.metadata``.
        module: the model (a DMP or a module containing one); its ``state_dict`` holds ShardedTensors.
        optimizers: KeyedOptimizers (e.g. ``CombinedOptimizer([dmp.fused_optimizer, dense])``) to save too.
        metadata: small picklable replicated state (epoch, loop progress), saved by rank 0 only.
    """
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    dcp_save(sharded_state_dict(module, optimizers), checkpoint_id=str(path))
    if metadata is not None and (not dist.is_initialized() or dist.get_rank() == 0):
        torch.save(dict(metadata), path / METADATA_FILE)
    if dist.is_initialized():
        dist.barrier()


def load_sharded(
    folder: str | Path,
    module: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer] = (),
) -> dict[str, Any]:
    """Load a ``save_sharded`` folder in place into ``module`` and ``optimizers`` (collective).

    Args:
        folder: a folder written by ``save_sharded``.
        module: a model built and sharded like the saved one (same tables; shards are matched by offset).
        optimizers: KeyedOptimizers to restore, in the order they were saved; may be fewer (e.g. none when
            only evaluating).

    Returns:
        The loaded state: ``{"model": state_dict, "optimizers": {...}}`` updated with the saved metadata.

    Raises:
        FileNotFoundError: if ``folder`` holds no DCP checkpoint.
    """
    path = Path(folder)
    if not (path / ".metadata").is_file():
        raise FileNotFoundError(f"{path} is not a sharded (DCP) checkpoint: no .metadata file in it.")
    for optimizer in optimizers:
        init_optimizer_state(optimizer)
    state = sharded_state_dict(module, optimizers)
    dcp_load(state, checkpoint_id=str(path))
    load_model_state(module, state[MODEL_KEY])
    for i, optimizer in enumerate(optimizers):
        optimizer.load_state_dict(state[OPTIMIZERS_KEY][str(i)])
    meta_path = path / METADATA_FILE
    metadata: dict[str, Any] = torch.load(meta_path, weights_only=False) if meta_path.is_file() else {}
    return {**metadata, **state}
