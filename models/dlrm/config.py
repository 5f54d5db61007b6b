"""Typed view of ``conf/model/dlrm*.yaml`` (Hydra structured configs: the yaml states every value with its
comment; a field with a default here is one the yaml may leave out). Table sizes are never configured: they
come from the manifest counts named by each table's ``size`` (e.g. ``num_items``).

Read a model group with ``recsys.config.typed(DLRMConfig, cfg["model"], "model")``; a saved config goes back
to json with ``recsys.config.as_dict``. This module imports no torch, so importing it is cheap.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from recsys.allocator import MallocSettings
from recsys.errors import ConfigError

POOLINGS = ("sum", "mean")
INTERACTIONS = ("dot", "dcn")
OBJECTIVES = ("binary", "ordinal", "listwise")
TASKS = ("ctr", "candidates")


@dataclass(frozen=True)
class TableSpec:
    """One embedding table and the sparse features (KJT keys) that look it up."""

    name: str
    features: tuple[str, ...]
    size: str
    pooling: str
    # Hash ids into at most this many rows (id % max_rows) when the vocabulary is larger; None = never.
    max_rows: int | None = None

    def __post_init__(self) -> None:
        # One type whether parsed from yaml, from a saved JSON config or built here (equality compares it).
        object.__setattr__(self, "features", tuple(self.features))

    def num_embeddings(self, counts: Mapping[str, int]) -> int:
        if self.size not in counts:
            raise ConfigError(
                f"table {self.name!r}: size {self.size!r} is not a manifest count; "
                f"available: {sorted(counts)}."
            )
        rows = int(counts[self.size])
        return min(rows, self.max_rows) if self.max_rows else rows


FBGEMM_WIDTH_MULTIPLE = 4
"""FBGEMM's fused table kernels need every table's row width to be a multiple of this."""


@dataclass(frozen=True)
class FactorizationHeadConfig:
    """A factorization-machine head beside the DLRM / DCNv2 network, with tables of its own.

    Its logit is ``global bias + sum_f bias_f + sum_{f<g} <v_f, v_g>`` over ``features`` (a biased matrix
    factorization for ``[user_idx, item_idx]``). It is trained on its own loss, with ``l2`` times the squared
    norms of the rows it looked up added (the per-rating L2 of matrix factorization, which FBGEMM's CPU
    row-wise Adagrad cannot apply as weight decay), and the ranker's logit is the mean of both heads' logits.
    On MovieLens-100K the two heads err differently: the network memorises users and items within a few
    epochs, while the L2-regularised factorization generalises from the same rows.

    Attributes:
        features: sparse features (KJT keys of ``DLRMConfig.tables``) whose embeddings interact; at least 2.
        embedding_dim: width of the factor vectors (a multiple of ``FBGEMM_WIDTH_MULTIPLE``).
        l2: weight of the mean (over rows) of the summed squared norms of the looked-up factor and bias rows.

    Its values are checked by ``DLRMConfig`` (they depend on the network's tables).
    """

    features: tuple[str, ...]
    embedding_dim: int
    l2: float

    @staticmethod
    def factor_table(feature: str) -> str:
        return f"fm_{feature}"

    @staticmethod
    def bias_table(feature: str) -> str:
        return f"fm_bias_{feature}"

    @property
    def table_names(self) -> tuple[str, ...]:
        """The head's tables: every feature's factor table, then every feature's bias table."""
        return (*(self.factor_table(f) for f in self.features), *(self.bias_table(f) for f in self.features))


@dataclass(frozen=True)
class DenseFeatures:
    """``model.dense_features``: numeric columns fed to the dense arch, ``log1p`` ones first.

    Iterating gives the column names in batch order (``log1p`` then ``identity``), so code that read the old
    ``DLRMConfig.dense_features`` tuple keeps working (``len``, ``*cfg.dense_features``, ``in``).
    """

    log1p: tuple[str, ...]
    identity: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.log1p, *self.identity)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.log1p) + len(self.identity)

    def __contains__(self, name: object) -> bool:
        return name in self.names


@dataclass(frozen=True)
class OptimConfig:
    dense_lr: float
    sparse_lr: float
    eps: float
    # L2 penalty of the dense part (Adam's weight_decay). None for the tables: FBGEMM's CPU row-wise Adagrad
    # kernel accepts weight_decay but does not apply it (checked: identical tables with and without).
    dense_weight_decay: float


@dataclass(frozen=True)
class ShardingConfig:
    sharding_types: tuple[str, ...]
    # {table name: {ParameterConstraints field: value}}; checked by models.dlrm.sharding.build_constraints.
    constraints: dict[str, Any]
    hbm_cap_gib: float | None


@dataclass(frozen=True)
class CandidatesConfig:
    """``model.candidates`` of a ranker trained on its retriever's candidate lists (``task: candidates``).

    Attributes:
        retriever: the published model whose top-``k`` lists the ranker re-orders (``evaluate/<name>`` or
            ``train/<name>`` of the snapshot).
        k: candidates per list.
        holdout_fraction: share of the valid users whose lists validate the ranker instead of training it.
        score_features: other published models whose scores of each candidate are ranker features.
    """

    retriever: str
    k: int
    holdout_fraction: float
    score_features: tuple[str, ...] = ()


@dataclass(frozen=True)
class DLRMConfig:
    """``conf/model/dlrm.yaml`` (and the confs that inherit it: ``dlrm_criteo``, ``dcn``,
    ``reclora``'s ``conventional.dlrm``); see the yaml for what each value means."""

    name: str
    family: str
    interaction: str
    dcn_num_layers: int
    dcn_low_rank_dim: int
    # binary: BCE on the 0/1 label. ordinal: also BCE on "rating >= cut" for each of ``ordinal_cuts``,
    # through the same logit shifted by a per-cut constant (a cumulative-link model, see module.py).
    objective: str
    ordinal_cuts: tuple[float, ...]
    embedding_dim: int
    dense_arch_layer_sizes: tuple[int, ...]
    over_arch_layer_sizes: tuple[int, ...]
    tables: tuple[TableSpec, ...]
    # A factorization head trained beside the network (None = the network alone).
    factorization_head: FactorizationHeadConfig | None
    dense_features: DenseFeatures
    optim: OptimConfig
    shuffle_buffer_rows: int | None
    batch_size: int
    epochs: int
    early_stopping_patience: int | None
    sharding: ShardingConfig
    # data set name -> model conf used instead (read by recsys.config.compose; e.g. {criteo: dlrm_criteo}).
    variant_for_data: dict[str, str] = field(default_factory=dict)
    # TorchRecStrategy: Lightning's SIGTERM broadcast every N-th step (1 = every step, Lightning's own).
    sigterm_broadcast_every_n_steps: int = 1
    # Fixed glibc malloc thresholds of the training processes (None = glibc's dynamic defaults).
    malloc: MallocSettings | None = None
    # ctr: the features stage's CTR samples (liked vs not among rated items). candidates: the lists of a
    # retriever (engaged item vs the other candidates), built by models/dlrm/candidates.py.
    task: str = "ctr"
    candidates: CandidatesConfig | None = None
    # Validation metric that picks the best epoch and drives early stopping (test/... is the promotion gate).
    monitor: str = "val/auc"
    # Networks (dense, interaction and over arches) over the same tables, each initialised apart and trained
    # on its own loss; the logit is their mean: an ensemble in one model, one state dict, one pyfunc.
    replicas: int = 1
    # The data's user attributes (``features.vocab.user_attributes``, i.e. ``data.user_attributes``): one
    # sum-pooled table each (``t_<a>`` on ``<a>_idx``, ``num_<a>`` rows) after ``tables``, so the features
    # the model reads follow the data set instead of naming MovieLens's. An attribute whose feature a
    # listed table already reads gets no second table (a saved, expanded config parses to itself).
    attribute_tables: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        listed = {f for t in self.tables for f in t.features}
        extra = tuple(
            TableSpec(f"t_{a}", (f"{a}_idx",), f"num_{a}", "sum")
            for a in self.attribute_tables
            if f"{a}_idx" not in listed
        )
        # Frozen: the expansion happens once, while constructing.
        object.__setattr__(self, "tables", (*self.tables, *extra))
        self.validate()

    @property
    def sparse_features(self) -> tuple[str, ...]:
        """KJT keys, in table order then feature order (the order every batch uses)."""
        return tuple(f for t in self.tables for f in t.features)

    @property
    def table_names(self) -> tuple[str, ...]:
        """Every embedding table the planner places: the network's, then the factorization head's."""
        head = () if self.factorization_head is None else self.factorization_head.table_names
        return (*(t.name for t in self.tables), *head)

    def table_of(self, feature: str) -> TableSpec:
        """The network table that ``feature`` looks up (its size, hashing and pooling)."""
        for table in self.tables:
            if feature in table.features:
                return table
        raise ConfigError(
            f"sparse feature {feature!r} is in no model.tables entry; features: {list(self.sparse_features)}."
        )

    @property
    def log1p_features(self) -> tuple[str, ...]:
        return tuple(self.dense_features.log1p)

    @property
    def identity_features(self) -> tuple[str, ...]:
        return tuple(self.dense_features.identity)

    @property
    def list_size(self) -> int | None:
        """Rows per candidate list when batches must hold whole lists (the listwise objective), else None."""
        if self.objective == "listwise" and self.candidates is not None:
            return self.candidates.k
        return None

    def validate(self) -> None:
        """The checks no type can express (run on construction, so every instance passed them)."""
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"model.objective={self.objective!r}; choose one of {OBJECTIVES}.")
        if self.task not in TASKS:
            raise ConfigError(f"model.task={self.task!r}; choose one of {TASKS}.")
        if self.task == "candidates" and self.candidates is None:
            raise ConfigError(
                "model.task=candidates needs model.candidates, e.g. {retriever: sasrec, k: 100, "
                "holdout_fraction: 0.2}."
            )
        if self.objective == "listwise" and self.task != "candidates":
            raise ConfigError("model.objective=listwise needs model.task=candidates (lists to rank).")
        if self.list_size is not None and self.batch_size % self.list_size:
            raise ConfigError(
                f"model.batch_size={self.batch_size} must be a multiple of model.candidates.k="
                f"{self.list_size}: a listwise batch holds whole lists."
            )
        if self.objective == "ordinal" and not self.ordinal_cuts:
            raise ConfigError(
                "model.objective=ordinal needs model.ordinal_cuts, the rating levels besides the label's "
                "threshold, e.g. [2, 3, 5] for 1-5 star ratings labelled by rating >= 4."
            )
        if self.interaction not in INTERACTIONS:
            raise ConfigError(f"model.interaction={self.interaction!r}; choose one of {INTERACTIONS}.")
        if self.replicas < 1:
            raise ConfigError(f"model.replicas={self.replicas}: must be >= 1 (1 = a single network).")
        if self.replicas > 1 and self.factorization_head is not None:
            raise ConfigError(
                "model.replicas > 1 with a model.factorization_head: choose one way of averaging rankers."
            )
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
        if self.factorization_head is not None:
            self._validate_factorization_head(self.factorization_head)
        if self.sigterm_broadcast_every_n_steps < 1:
            raise ConfigError(
                f"model.sigterm_broadcast_every_n_steps={self.sigterm_broadcast_every_n_steps}: must be at "
                "least 1 (1 = every step)."
            )

    def _validate_factorization_head(self, head: FactorizationHeadConfig) -> None:
        if len(head.features) < 2 or len(set(head.features)) != len(head.features):
            raise ConfigError(
                "model.factorization_head.features needs at least two distinct sparse features, "
                f"e.g. [user_idx, item_idx]; got {list(head.features)}."
            )
        for feature in head.features:
            self.table_of(feature)
        if head.embedding_dim <= 0 or head.embedding_dim % FBGEMM_WIDTH_MULTIPLE:
            raise ConfigError(
                f"model.factorization_head.embedding_dim={head.embedding_dim}: must be a positive multiple "
                f"of {FBGEMM_WIDTH_MULTIPLE} (FBGEMM's table kernels), e.g. 64."
            )
        if head.l2 < 0:
            raise ConfigError(f"model.factorization_head.l2={head.l2}: must be >= 0.")
        clash = sorted({t.name for t in self.tables} & set(head.table_names))
        if clash:
            raise ConfigError(
                f"model.tables uses the factorization head's table names {clash}; rename those tables."
            )


@dataclass(frozen=True)
class DLRMBenchConfig:
    """``conf/bench/dlrm.yaml`` (``recsys bench dlrm``); see the yaml and ``models.dlrm.bench``."""

    name: str
    batch_size: int
    num_batches: int
    warmup_batches: int
    num_dense: int
    num_sparse: int
    rows_per_table: int
    embedding_dim: int
    world_sizes: tuple[int, ...]
    repeats: int
    out_dir: str

    def __post_init__(self) -> None:
        if self.warmup_batches < 1:
            # the first timed step interval starts at the end of the last warm-up step
            raise ConfigError(f"bench.dlrm.warmup_batches={self.warmup_batches}: must be at least 1.")
