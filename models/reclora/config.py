"""Typed view of ``conf/model/reclora.yaml`` (every field is commented there)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.dlrm.config import DLRMConfig
from recsys.errors import ConfigError

BACKBONE_KINDS = ("encoder", "causal")
POOLINGS = ("mean", "cls")
ARMS = ("shared", "personalized")


@dataclass(frozen=True)
class BackboneConfig:
    path: str | None
    kind: str
    pooling: str
    yes_token: str
    no_token: str


@dataclass(frozen=True)
class PromptConfig:
    max_length: int
    short_history: int
    title_chars: int
    user_attributes: tuple[str, ...]


@dataclass(frozen=True)
class LoRAConfig:
    targets: tuple[str, ...]
    rank: int
    alpha: int
    dropout: float
    num_meta: int
    layers: tuple[int, ...] | None = None

    @property
    def scaling(self) -> float:
        """PEFT's ``lora_alpha / r``."""
        return self.alpha / self.rank


@dataclass(frozen=True)
class MixerConfig:
    hidden: int
    temperature: float


@dataclass(frozen=True)
class TrainConfig:
    few2many_fraction: float
    batch_size: int
    epochs: int
    lr: float
    weight_decay: float
    eval_max_samples: int | None
    num_threads: int


@dataclass(frozen=True)
class RecLoRAConfig:
    name: str
    backbone: BackboneConfig
    prompt: PromptConfig
    retriever_modality: str
    retriever_pool: int | None
    long_history: int
    dlrm: DLRMConfig
    lora: LoRAConfig
    mixer: MixerConfig
    train: TrainConfig
    arms: tuple[str, ...]
    retriever_settings: tuple[bool, ...]
    seeds: tuple[int, ...]

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> RecLoRAConfig:
        b, p, lo, mx, t = m["backbone"], m["prompt"], m["lora"], m["mixer"], m["train"]
        cfg = cls(
            name=str(m["name"]),
            backbone=BackboneConfig(
                path=None if b.get("path") is None else str(b["path"]),
                kind=str(b["kind"]),
                pooling=str(b["pooling"]),
                yes_token=str(b["yes_token"]),
                no_token=str(b["no_token"]),
            ),
            prompt=PromptConfig(
                int(p["max_length"]),
                int(p["short_history"]),
                int(p["title_chars"]),
                tuple(str(a) for a in p.get("user_attributes") or ()),
            ),
            retriever_modality=str(m["retriever"]["modality"]),
            retriever_pool=None if m["retriever"].get("pool") is None else int(m["retriever"]["pool"]),
            long_history=int(m["conventional"]["long_history"]),
            dlrm=DLRMConfig.from_mapping(m["conventional"]["dlrm"]),
            lora=LoRAConfig(
                targets=tuple(str(x) for x in lo["targets"]),
                rank=int(lo["rank"]),
                alpha=int(lo["alpha"]),
                dropout=float(lo["dropout"]),
                num_meta=int(lo["num_meta"]),
                layers=None if lo.get("layers") is None else tuple(int(x) for x in lo["layers"]),
            ),
            mixer=MixerConfig(int(mx["hidden"]), float(mx["temperature"])),
            train=TrainConfig(
                few2many_fraction=float(t["few2many_fraction"]),
                batch_size=int(t["batch_size"]),
                epochs=int(t["epochs"]),
                lr=float(t["lr"]),
                weight_decay=float(t["weight_decay"]),
                eval_max_samples=None if t.get("eval_max_samples") is None else int(t["eval_max_samples"]),
                num_threads=int(t.get("num_threads") or 0),
            ),
            arms=tuple(str(a) for a in m["arms"]),
            retriever_settings=tuple(bool(r) for r in m["retriever_settings"]),
            seeds=tuple(int(s) for s in m["seeds"]),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.backbone.kind not in BACKBONE_KINDS:
            raise ConfigError(f"model.backbone.kind={self.backbone.kind!r}; choose one of {BACKBONE_KINDS}.")
        if self.backbone.pooling not in POOLINGS:
            raise ConfigError(f"model.backbone.pooling={self.backbone.pooling!r}; choose one of {POOLINGS}.")
        if not 0.0 < self.train.few2many_fraction <= 1.0:
            raise ConfigError(
                f"model.train.few2many_fraction={self.train.few2many_fraction} must be in (0, 1]."
            )
        if self.lora.rank < 1 or self.lora.num_meta < 1:
            raise ConfigError(
                f"model.lora.rank={self.lora.rank} and model.lora.num_meta={self.lora.num_meta} must be >= 1."
            )
        if self.mixer.temperature <= 0:
            raise ConfigError(f"model.mixer.temperature={self.mixer.temperature} must be > 0.")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ConfigError(f"model.arms has {unknown}; choose from {ARMS}.")
        if not self.seeds:
            raise ConfigError("model.seeds is empty; give at least one seed, e.g. model.seeds=[42].")
        if self.prompt.short_history < 0 or self.long_history < 1:
            raise ConfigError(
                f"model.prompt.short_history={self.prompt.short_history} must be >= 0 and "
                f"model.conventional.long_history={self.long_history} >= 1."
            )
