"""Typed view of ``conf/model/reclora.yaml`` (every field is commented there) and of ``recsys bench reclora``
(``conf/bench/reclora.yaml``). Hydra structured configs, read with ``recsys.config.typed``; this module
imports no torch, so importing it is cheap."""

from __future__ import annotations

from dataclasses import dataclass

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
    # Transformer blocks (0-based) that get LoRA; None = every block.
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
class RetrieverConfig:
    modality: str
    pool: int | None


@dataclass(frozen=True)
class ConventionalConfig:
    long_history: int
    # conf/model/dlrm.yaml, mounted here by reclora.yaml's defaults list.
    dlrm: DLRMConfig


@dataclass(frozen=True)
class RecLoRAConfig:
    """``conf/model/reclora.yaml``: ``recsys.config.typed(RecLoRAConfig, cfg["model"], "model")``."""

    name: str
    family: str
    backbone: BackboneConfig
    prompt: PromptConfig
    retriever: RetrieverConfig
    conventional: ConventionalConfig
    lora: LoRAConfig
    mixer: MixerConfig
    train: TrainConfig
    arms: tuple[str, ...]
    retriever_settings: tuple[bool, ...]
    seeds: tuple[int, ...]

    def __post_init__(self) -> None:
        self.validate()

    @property
    def retriever_modality(self) -> str:
        return self.retriever.modality

    @property
    def retriever_pool(self) -> int | None:
        return self.retriever.pool

    @property
    def long_history(self) -> int:
        return self.conventional.long_history

    @property
    def dlrm(self) -> DLRMConfig:
        return self.conventional.dlrm

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


@dataclass(frozen=True)
class RecLoRABenchSettings:
    """``conf/bench/reclora.yaml`` (``recsys bench reclora``); see the yaml for what each value means."""

    name: str
    backbone_path: str | None
    batch_size: int
    seq_length: int
    num_batches: int
    warmup_batches: int
    repeats: int
    targets: tuple[str, ...]
    rank: int
    alpha: int
    layers: tuple[int, ...] | None
    num_meta: int
    mixer_hidden: int
    user_dim: int
    num_threads: int
    out_dir: str
