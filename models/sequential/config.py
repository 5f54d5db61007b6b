"""Typed settings of the sequential models (``conf/model/sasrec.yaml``, ``conf/model/molar.yaml``) and of
``recsys bench sequential`` (``conf/bench/sequential.yaml``).

Hydra structured configs: ``recsys.config.typed(SequentialConfig, cfg["model"], "model")`` fails at start-up
with the key named on a typo or a wrong type, not deep inside training. The yaml files state every value
(with its comment). This module imports no torch, so importing it is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

from recsys.errors import ConfigError

ARCHITECTURES = ("sasrec", "molar")
LOSSES = ("full", "sampled")
Architecture = str
"""One of ``ARCHITECTURES`` (checked by ``SequentialConfig``)."""
LossKind = str
"""One of ``LOSSES`` (checked by ``SequentialConfig``)."""
_SOURCE = "conf/model"


@dataclass(frozen=True)
class MolarConfig:
    """The Molar-specific part: content modalities, fusion and the post-alignment loss."""

    modalities: tuple[str, ...]
    projection_hidden: int
    align_weight: float
    temperature: float


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
    # Early stopping is ignored before min_steps optimizer steps; linear LR warmup (sasrec.yaml says why).
    min_steps: int = 0
    warmup_steps: int = 0
    # loss: full refuses a catalog whose batch logits (batch_size x max_len x items, float32) exceed this.
    full_softmax_max_gib: float = 2.0
    # Baselines whose validation NDCG@10 the model must beat (models/sequential/floor.py); () = no floor.
    floor_baselines: tuple[str, ...] = ()
    # The `molar:` block (architecture=molar only; sasrec.yaml has none).
    molar: MolarConfig | None = None

    def __post_init__(self) -> None:
        name = self.name
        if self.architecture not in ARCHITECTURES:
            raise ConfigError(
                f"{_SOURCE}/{name}.yaml: architecture must be sasrec or molar, got {self.architecture!r}."
            )
        if self.loss not in LOSSES:
            raise ConfigError(f"{_SOURCE}/{name}.yaml: loss must be full or sampled, got {self.loss!r}.")
        if self.architecture == "molar" and self.molar is None:
            raise ConfigError(f"{_SOURCE}/{name}.yaml: architecture=molar needs a `molar:` block.")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(
                f"{_SOURCE}/{name}.yaml: hidden_dim={self.hidden_dim} must be divisible by "
                f"num_heads={self.num_heads}."
            )
        if min(self.max_len, self.batch_size, self.max_epochs, self.patience, self.num_negatives) < 1:
            raise ConfigError(
                f"{_SOURCE}/{name}.yaml: max_len, batch_size, max_epochs, patience and num_negatives "
                "must be >= 1."
            )
        if min(self.min_steps, self.warmup_steps) < 0:
            raise ConfigError(f"{_SOURCE}/{name}.yaml: min_steps and warmup_steps must be >= 0.")

    def check_catalog(self, num_items: int) -> None:
        """Refuse a full softmax the catalog makes too large to hold (it would swap or be OOM-killed)."""
        if self.loss != "full":
            return
        gib = self.batch_size * self.max_len * num_items * 4 / 2**30
        if gib > self.full_softmax_max_gib:
            raise ConfigError(
                f"{_SOURCE}/{self.name}.yaml: loss: full scores all {num_items:,} items at every position: "
                f"batch_size x max_len x items = {self.batch_size} x {self.max_len} x {num_items:,} logits "
                f"({gib:.1f} GiB, about 3x that with gradients), above full_softmax_max_gib="
                f"{self.full_softmax_max_gib:g}. Use model.loss=sampled (softmax over the target and "
                f"model.num_negatives={self.num_negatives} popularity samples, logQ-corrected), or lower "
                f"model.batch_size / model.max_len."
            )


@dataclass(frozen=True)
class SequentialBenchSettings:
    """``conf/bench/sequential.yaml`` (``recsys bench sequential``)."""

    name: str
    models: tuple[str, ...]
    """The first one is also timed in the plain loop."""
    epochs: int
    num_threads: int | None
    out_dir: str
