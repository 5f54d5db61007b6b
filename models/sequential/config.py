"""Typed settings of the sequential models (``conf/model/sasrec.yaml``, ``conf/model/molar.yaml``).

A typo in the yaml fails at start-up with the key named (``from_mapping``), not deep inside training.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from recsys.errors import ConfigError

Architecture = Literal["sasrec", "molar"]
LossKind = Literal["full", "sampled"]
_SOURCE = "conf/model"


@dataclass(frozen=True)
class MolarConfig:
    """The Molar-specific part: content modalities, fusion and the post-alignment loss."""

    modalities: tuple[str, ...] = ("text",)
    projection_hidden: int = 256
    align_weight: float = 0.02
    temperature: float = 0.1


@dataclass(frozen=True)
class SequentialConfig:
    """Every hyperparameter of SASRec / Molar training; see the yaml files for units and meaning."""

    name: str
    family: str
    architecture: Architecture
    max_len: int
    hidden_dim: int
    num_blocks: int
    num_heads: int
    dropout: float
    loss: LossKind
    num_negatives: int
    logq_correction: bool
    lr: float
    weight_decay: float
    batch_size: int
    bucket_by_length: bool
    max_epochs: int
    patience: int
    eval_batch_size: int
    few_interactions_max: int
    num_threads: int | None
    seeds: tuple[int, ...] | None
    molar: MolarConfig | None = None

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> SequentialConfig:
        name = str(mapping.get("name", "?"))
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ConfigError(f"{_SOURCE}/{name}.yaml: unknown keys {unknown}; known keys: {sorted(known)}.")
        missing = sorted(f.name for f in fields(cls) if f.name not in mapping and f.name != "molar")
        if missing:
            raise ConfigError(f"{_SOURCE}/{name}.yaml: missing keys {missing}.")
        values = dict(mapping)
        architecture = str(values["architecture"])
        if architecture not in ("sasrec", "molar"):
            raise ConfigError(
                f"{_SOURCE}/{name}.yaml: architecture must be sasrec or molar, got {architecture!r}."
            )
        if str(values["loss"]) not in ("full", "sampled"):
            raise ConfigError(f"{_SOURCE}/{name}.yaml: loss must be full or sampled, got {values['loss']!r}.")
        molar = values.get("molar")
        if architecture == "molar" and not molar:
            raise ConfigError(f"{_SOURCE}/{name}.yaml: architecture=molar needs a `molar:` block.")
        molar_cfg = None
        if molar:
            molar_known = {f.name for f in fields(MolarConfig)}
            bad = sorted(set(molar) - molar_known)
            if bad:
                raise ConfigError(
                    f"{_SOURCE}/{name}.yaml: unknown keys molar.{bad}; known: {sorted(molar_known)}."
                )
            molar_cfg = MolarConfig(
                modalities=tuple(str(m) for m in molar.get("modalities", ("text",))),
                projection_hidden=int(molar.get("projection_hidden", MolarConfig.projection_hidden)),
                align_weight=float(molar.get("align_weight", MolarConfig.align_weight)),
                temperature=float(molar.get("temperature", MolarConfig.temperature)),
            )
        seeds = values.get("seeds")
        threads = values.get("num_threads")
        cfg = cls(
            name=name,
            family=str(values["family"]),
            architecture=architecture,  # type: ignore[arg-type]
            max_len=int(values["max_len"]),
            hidden_dim=int(values["hidden_dim"]),
            num_blocks=int(values["num_blocks"]),
            num_heads=int(values["num_heads"]),
            dropout=float(values["dropout"]),
            loss=str(values["loss"]),  # type: ignore[arg-type]
            num_negatives=int(values["num_negatives"]),
            logq_correction=bool(values["logq_correction"]),
            lr=float(values["lr"]),
            weight_decay=float(values["weight_decay"]),
            batch_size=int(values["batch_size"]),
            bucket_by_length=bool(values["bucket_by_length"]),
            max_epochs=int(values["max_epochs"]),
            patience=int(values["patience"]),
            eval_batch_size=int(values["eval_batch_size"]),
            few_interactions_max=int(values["few_interactions_max"]),
            num_threads=None if threads is None else int(threads),
            seeds=None if seeds is None else tuple(int(s) for s in seeds),
            molar=molar_cfg,
        )
        if cfg.hidden_dim % cfg.num_heads:
            raise ConfigError(
                f"{_SOURCE}/{name}.yaml: hidden_dim={cfg.hidden_dim} must be divisible by "
                f"num_heads={cfg.num_heads}."
            )
        if min(cfg.max_len, cfg.batch_size, cfg.max_epochs, cfg.patience, cfg.num_negatives) < 1:
            raise ConfigError(
                f"{_SOURCE}/{name}.yaml: max_len, batch_size, max_epochs, patience and num_negatives "
                "must be >= 1."
            )
        return cfg
