"""Shard the DLRM tables with the TorchRec planner and wrap the network in ``DistributedModelParallel``.

Process groups stay here, out of ``network.py`` (STYLE 2.2). Tables are built on ``meta``; DMP materialises
only the shards each rank owns, updates them with FBGEMM's fused row-wise Adagrad inside backward, and wraps
the dense part in data parallelism. One process (world size 1) goes through the same DMP code path, so the
single-process run and tests exercise what multi-process training uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingEnv, ShardingPlan

from models.dlrm.config import DLRMConfig
from models.dlrm.network import DLRMRanker, build_ranker
from recsys.errors import ConfigError

GIB = 1024**3
CONSTRAINT_FIELDS = frozenset(ParameterConstraints.__dataclass_fields__)
"""Keys allowed in ``sharding.constraints.<table>`` (those of TorchRec's ``ParameterConstraints``)."""


@dataclass(frozen=True)
class ShardedDLRM:
    """A DMP-wrapped ranker and the plan that placed its tables.

    Attributes:
        model: ``DistributedModelParallel`` around a ``DLRMRanker``; ``model(batch)`` gives ``[B]`` logits.
        plan: the TorchRec plan (table -> sharding type and ranks), identical on every rank.
    """

    model: DistributedModelParallel
    plan: ShardingPlan


def compute_device_type(device: torch.device) -> str:
    """``"cuda"`` or ``"cpu"``: the planner's cost model and the FBGEMM kernels differ between them."""
    return "cuda" if device.type == "cuda" else "cpu"


def build_topology(cfg: DLRMConfig, world_size: int, device: torch.device) -> Topology:
    """The planner's view of the machines: ``world_size`` devices of one type, capped by ``hbm_cap_gib``.

    On CPU the tables live in host memory, so the cap applies to TorchRec's DDR budget; on CUDA to HBM.
    """
    compute_device = compute_device_type(device)
    cap = None if cfg.sharding.hbm_cap_gib is None else int(cfg.sharding.hbm_cap_gib * GIB)
    if compute_device == "cuda":
        return Topology(world_size=world_size, compute_device=compute_device, hbm_cap=cap)
    return Topology(world_size=world_size, compute_device=compute_device, ddr_cap=cap)


def build_constraints(cfg: DLRMConfig) -> dict[str, ParameterConstraints]:
    """Per-table planner constraints: ``sharding.sharding_types`` for every table, then per-table overrides.

    Args:
        cfg: model config; ``cfg.sharding.constraints`` maps a table name to ``ParameterConstraints`` fields,
            e.g. ``{"t_item": {"sharding_types": ["row_wise"]}}``.

    Returns:
        ``{table name: ParameterConstraints}`` for every table in ``cfg.table_names`` (the factorization
        head's too).

    Raises:
        ConfigError: if an override names an unknown table or field.
    """
    table_names = set(cfg.table_names)
    unknown_tables = sorted(set(cfg.sharding.constraints) - table_names)
    if unknown_tables:
        raise ConfigError(
            f"model.sharding.constraints names unknown tables {unknown_tables}; "
            f"tables: {sorted(table_names)}."
        )
    constraints: dict[str, ParameterConstraints] = {}
    for name in cfg.table_names:
        fields: dict[str, Any] = {"sharding_types": list(cfg.sharding.sharding_types)}
        override: Mapping[str, Any] = cfg.sharding.constraints.get(name) or {}
        bad = sorted(set(override) - CONSTRAINT_FIELDS)
        if bad:
            raise ConfigError(
                f"model.sharding.constraints.{name} has unknown fields {bad}; "
                f"allowed: {sorted(CONSTRAINT_FIELDS)}."
            )
        fields.update({k: list(v) if isinstance(v, list | tuple) else v for k, v in override.items()})
        constraints[name] = ParameterConstraints(**fields)
    return constraints


def build_sharders(cfg: DLRMConfig) -> list[EmbeddingBagCollectionSharder]:
    """The EBC sharder with FBGEMM's fused exact row-wise Adagrad (one accumulator per row).

    Fusing the sparse optimizer into the backward kernel avoids materialising table gradients.
    """
    fused_params = {
        "optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        "learning_rate": cfg.optim.sparse_lr,
        "eps": cfg.optim.eps,
    }
    return [EmbeddingBagCollectionSharder(fused_params=fused_params)]


def shard_ranker(
    cfg: DLRMConfig,
    counts: Mapping[str, int],
    device: torch.device,
    process_group: dist.ProcessGroup | None = None,
) -> ShardedDLRM:
    """Build a ``DLRMRanker`` with tables on ``meta``, plan their sharding and wrap it in DMP.

    Args:
        cfg: model config (tables, arches, optimizer, sharding).
        counts: manifest counts that size the tables.
        device: this rank's compute device (``cpu`` with gloo, ``cuda:<local rank>`` with NCCL).
        process_group: the group to shard over; default: the default group (which must exist, even for one
            process, so that the single- and multi-process paths are the same code).

    Returns:
        The DMP-wrapped model and its plan (same on every rank: planned on rank 0 and broadcast).

    Raises:
        RuntimeError: if no process group is initialised.
    """
    if not dist.is_initialized():
        raise RuntimeError(
            "shard_ranker needs torch.distributed initialised (gloo on CPU, nccl on CUDA), "
            "also for one process."
        )
    pg = process_group if process_group is not None else dist.GroupMember.WORLD
    assert pg is not None
    ranker = build_ranker(cfg, counts, torch.device("meta"), dense_device=device)
    sharders = build_sharders(cfg)
    planner = EmbeddingShardingPlanner(
        topology=build_topology(cfg, dist.get_world_size(pg), device),
        constraints=build_constraints(cfg),
    )
    modules_sharders: list[Any] = list(sharders)
    plan = planner.collective_plan(ranker, modules_sharders, pg)
    model = DistributedModelParallel(
        module=ranker,
        env=ShardingEnv.from_process_group(pg),
        device=device,
        plan=plan,
        sharders=modules_sharders,
    )
    return ShardedDLRM(model=model, plan=plan)


def unwrap_ranker(model: nn.Module) -> DLRMRanker:
    """The ``DLRMRanker`` inside a DMP (whose dense part DMP may wrap once more in DDP)."""
    inner = model.module if isinstance(model, DistributedModelParallel) else model
    while not isinstance(inner, DLRMRanker) and hasattr(inner, "module"):
        inner = inner.module
    if not isinstance(inner, DLRMRanker):
        raise TypeError(f"no DLRMRanker inside {type(model).__name__}")
    return inner


def table_ranks(plan: ShardingPlan) -> dict[str, list[int]]:
    """``{table name: sorted ranks holding a shard of it}``, to show and test where the planner put tables."""
    ranks: dict[str, list[int]] = {}
    for module_plan in plan.plan.values():
        for table, param_sharding in module_plan.items():
            ranks[table] = sorted(set(param_sharding.ranks or []))
    return ranks
