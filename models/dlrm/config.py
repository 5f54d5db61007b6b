"""Typed view of ``conf/model/dlrm*.yaml``. Table sizes are never configured: they come from the
manifest counts named by each table's ``size`` (e.g. ``num_items``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from recsys.errors import ConfigError

POOLINGS = ("sum", "mean")
INTERACTIONS = ("dot", "dcn")
OBJECTIVES = ("binary", "ordinal")


@dataclass(frozen=True)
class TableSpec:
    """One embedding table and the sparse features (KJT keys) that look it up."""

    name: str
    features: tuple[str, ...]
    size: str
    pooling: str = "sum"
    # Hash ids into at most this many rows (id % max_rows) when the vocabulary is larger; None = never.
    max_rows: int | None = None

    def num_embeddings(self, counts: Mapping[str, int]) -> int:
        if self.size not in counts:
            raise ConfigError(
                f"table {self.name!r}: size {self.size!r} is not a manifest count; "
                f"available: {sorted(counts)}."
            )
        rows = int(counts[self.size])
        return min(rows, self.max_rows) if self.max_rows else rows


@dataclass(frozen=True)
class OptimConfig:
    dense_lr: float
    sparse_lr: float
    eps: float
    # L2 penalty of the dense part (Adam's weight_decay). None for the tables: FBGEMM's CPU row-wise Adagrad
    # kernel accepts weight_decay but does not apply it (checked: identical tables with and without).
    dense_weight_decay: float = 0.0


@dataclass(frozen=True)
class ShardingConfig:
    sharding_types: tuple[str, ...]
    constraints: Mapping[str, Any] = field(default_factory=dict)
    hbm_cap_gib: float | None = None


@dataclass(frozen=True)
class DLRMConfig:
    name: str
    interaction: str
    embedding_dim: int
    dense_arch_layer_sizes: tuple[int, ...]
    over_arch_layer_sizes: tuple[int, ...]
    tables: tuple[TableSpec, ...]
    log1p_features: tuple[str, ...]
    identity_features: tuple[str, ...]
    optim: OptimConfig
    sharding: ShardingConfig
    batch_size: int
    epochs: int
    dcn_num_layers: int = 3
    dcn_low_rank_dim: int = 64
    shuffle_buffer_rows: int | None = None
    early_stopping_patience: int | None = None
    # binary: BCE on the 0/1 label. ordinal: also BCE on "rating >= cut" for each of ``ordinal_cuts``,
    # through the same logit shifted by a per-cut constant (a cumulative-link model, see module.py).
    objective: str = "binary"
    ordinal_cuts: tuple[float, ...] = ()

    @property
    def sparse_features(self) -> tuple[str, ...]:
        """KJT keys, in table order then feature order (the order every batch uses)."""
        return tuple(f for t in self.tables for f in t.features)

    @property
    def dense_features(self) -> tuple[str, ...]:
        return (*self.log1p_features, *self.identity_features)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> DLRMConfig:
        tables = tuple(
            TableSpec(
                name=str(t["name"]),
                features=tuple(str(f) for f in t["features"]),
                size=str(t["size"]),
                pooling=str(t.get("pooling", "sum")),
                max_rows=None if t.get("max_rows") is None else int(t["max_rows"]),
            )
            for t in m["tables"]
        )
        dense = m.get("dense_features") or {}
        cfg = cls(
            name=str(m["name"]),
            interaction=str(m["interaction"]),
            embedding_dim=int(m["embedding_dim"]),
            dense_arch_layer_sizes=tuple(int(x) for x in m["dense_arch_layer_sizes"]),
            over_arch_layer_sizes=tuple(int(x) for x in m["over_arch_layer_sizes"]),
            tables=tables,
            log1p_features=tuple(str(f) for f in dense.get("log1p") or ()),
            identity_features=tuple(str(f) for f in dense.get("identity") or ()),
            optim=OptimConfig(
                float(m["optim"]["dense_lr"]),
                float(m["optim"]["sparse_lr"]),
                float(m["optim"]["eps"]),
                dense_weight_decay=float(m["optim"].get("dense_weight_decay", 0.0)),
            ),
            sharding=ShardingConfig(
                sharding_types=tuple(str(s) for s in m["sharding"]["sharding_types"]),
                constraints=dict(m["sharding"].get("constraints") or {}),
                hbm_cap_gib=None
                if m["sharding"].get("hbm_cap_gib") is None
                else float(m["sharding"]["hbm_cap_gib"]),
            ),
            batch_size=int(m["batch_size"]),
            epochs=int(m["epochs"]),
            dcn_num_layers=int(m.get("dcn_num_layers", 3)),
            dcn_low_rank_dim=int(m.get("dcn_low_rank_dim", 64)),
            shuffle_buffer_rows=None
            if m.get("shuffle_buffer_rows") is None
            else int(m["shuffle_buffer_rows"]),
            early_stopping_patience=None
            if m.get("early_stopping_patience") is None
            else int(m["early_stopping_patience"]),
            objective=str(m.get("objective", "binary")),
            ordinal_cuts=tuple(float(c) for c in m.get("ordinal_cuts") or ()),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"model.objective={self.objective!r}; choose one of {OBJECTIVES}.")
        if self.objective == "ordinal" and not self.ordinal_cuts:
            raise ConfigError(
                "model.objective=ordinal needs model.ordinal_cuts, the rating levels besides the label's "
                "threshold, e.g. [2, 3, 5] for 1-5 star ratings labelled by rating >= 4."
            )
        if self.interaction not in INTERACTIONS:
            raise ConfigError(f"model.interaction={self.interaction!r}; choose one of {INTERACTIONS}.")
        if self.dense_arch_layer_sizes[-1] != self.embedding_dim:
            raise ConfigError(
                f"model.dense_arch_layer_sizes must end with embedding_dim={self.embedding_dim}, "
                f"got {list(self.dense_arch_layer_sizes)}."
            )
        if self.over_arch_layer_sizes[-1] != 1:
            raise ConfigError(
                "model.over_arch_layer_sizes must end with 1 (the logit), "
                f"got {list(self.over_arch_layer_sizes)}."
            )
        for table in self.tables:
            if table.pooling not in POOLINGS:
                raise ConfigError(
                    f"table {table.name!r}: pooling {table.pooling!r}; choose one of {POOLINGS}."
                )
        seen: set[str] = set()
        for feature in self.sparse_features:
            if feature in seen:
                raise ConfigError(f"sparse feature {feature!r} is mapped to two tables in model.tables.")
            seen.add(feature)
