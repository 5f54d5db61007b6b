"""Plain ``nn.Module`` pieces of the DLRM ranker: the TorchRec embedding tables and the DLRM / DCNv2 network.

No Lightning, no I/O, no loss and no process group here (STYLE 2.2): the LightningModule, the sharding code,
the pyfunc and the tests all build on these. Shapes: B batch size, F_d dense features, F_s sparse features
(KJT keys), D ``embedding_dim``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, overload

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, DLRM_DCN
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.dlrm.batch import CTRBatch
from models.dlrm.config import FBGEMM_WIDTH_MULTIPLE, DLRMConfig, FactorizationHeadConfig

POOLING_TYPES: dict[str, PoolingType] = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}
"""Conf ``pooling`` name -> TorchRec pooling of a bag of ids into one vector."""


def embedding_bag_configs(cfg: DLRMConfig, counts: Mapping[str, int]) -> list[EmbeddingBagConfig]:
    """One ``EmbeddingBagConfig`` per ``cfg.tables`` entry, sized from the manifest counts.

    Args:
        cfg: model config; every table uses ``cfg.embedding_dim`` because DLRM's interaction needs one width.
        counts: manifest counts such as ``{"num_users": 945, "num_items": 1683}``; each table's row count is
            ``TableSpec.num_embeddings(counts)`` (never a number from conf).

    Returns:
        Configs in table order, so the KJT key order equals ``cfg.sparse_features``.

    Raises:
        ConfigError: if a table's ``size`` is not a manifest count.
    """
    return [
        EmbeddingBagConfig(
            name=table.name,
            embedding_dim=cfg.embedding_dim,
            num_embeddings=table.num_embeddings(counts),
            feature_names=list(table.features),
            pooling=POOLING_TYPES[table.pooling],
        )
        for table in cfg.tables
    ]


def build_embedding_bag_collection(
    cfg: DLRMConfig, counts: Mapping[str, int], device: torch.device
) -> EmbeddingBagCollection:
    """The sparse arch's tables as one TorchRec ``EmbeddingBagCollection``.

    Args:
        cfg: model config (tables, embedding_dim, pooling).
        counts: manifest counts that size the tables (see ``embedding_bag_configs``).
        device: where the weights live. Use ``torch.device("meta")`` for the sharded path: nothing is
            allocated, and ``DistributedModelParallel`` materialises only each rank's shards.

    Returns:
        An EBC whose ``forward(kjt)`` gives a ``KeyedTensor`` with one ``[B, D]`` pooled vector per feature.
    """
    return EmbeddingBagCollection(tables=embedding_bag_configs(cfg, counts), device=device)


BIAS_WIDTH = FBGEMM_WIDTH_MULTIPLE
"""Row width of a factorization head's bias table: FBGEMM cannot hold 1-wide rows; a bias is a row's sum."""


@dataclass(frozen=True)
class FactorizationTables:
    """The factorization head's two collections: factors and biases.

    Biases have tables of their own rather than extra columns beside the factors: row-wise Adagrad keeps one
    accumulator per row, and the bias's gradient (the loss's derivative itself) dwarfs the factors' (scaled by
    the other factors, near zero at the start), so sharing rows starved the factors (MovieLens-100K random
    split, seed 42: that head alone reached test AUC 0.762, against 0.79 for a biased MF).
    """

    factors: EmbeddingBagCollection
    biases: EmbeddingBagCollection


def factorization_bag_configs(
    cfg: DLRMConfig, counts: Mapping[str, int]
) -> tuple[list[EmbeddingBagConfig], list[EmbeddingBagConfig]]:
    """``(factor tables, bias tables)`` of the factorization head, one of each per head feature.

    Each is sized, hashed and pooled like the network table that feature looks up (``DLRMConfig.table_of``),
    so both heads see the same ids. Factor tables are ``embedding_dim`` wide, bias tables ``BIAS_WIDTH``.

    Returns:
        Both lists in ``FactorizationHeadConfig.features`` order; empty without a head.
    """
    head = cfg.factorization_head
    if head is None:
        return [], []

    network_tables = {feature: cfg.table_of(feature) for feature in head.features}

    def configs(name: Callable[[str], str], width: int) -> list[EmbeddingBagConfig]:
        return [
            EmbeddingBagConfig(
                name=name(feature),
                embedding_dim=width,
                num_embeddings=table.num_embeddings(counts),
                feature_names=[feature],
                pooling=POOLING_TYPES[table.pooling],
            )
            for feature, table in network_tables.items()
        ]

    return configs(head.factor_table, head.embedding_dim), configs(head.bias_table, BIAS_WIDTH)


def build_factorization_tables(
    cfg: DLRMConfig, counts: Mapping[str, int], device: torch.device
) -> FactorizationTables | None:
    """The head's collections on ``device`` (``meta`` for DMP), None when the config has no head."""
    factors, biases = factorization_bag_configs(cfg, counts)
    if not factors:
        return None
    return FactorizationTables(
        EmbeddingBagCollection(tables=factors, device=device),
        EmbeddingBagCollection(tables=biases, device=device),
    )


class FactorizationHead(nn.Module):
    """Factorization-machine logit over its own tables (see ``FactorizationHeadConfig``).

    ``forward(kjt)`` gives ``(logits [B], squared_norms [B])``: ``global bias + sum_f bias_f +
    sum_{f<g} <v_f, v_g>`` (the FM identity ``(|sum_f v_f|^2 - sum_f |v_f|^2) / 2``), and per row the summed
    squared norms of the factor and bias rows looked up (the head's L2 term). The KJT may carry keys the
    head does not read.

    Args:
        head: the head's features.
        tables: its factor and bias collections (``build_factorization_tables``).
        dense_device: device of the global bias.
    """

    def __init__(
        self, head: FactorizationHeadConfig, tables: FactorizationTables, dense_device: torch.device | None
    ) -> None:
        super().__init__()
        self.features = list(head.features)
        self.factor_tables = tables.factors
        self.bias_tables = tables.biases
        self.bias = nn.Parameter(torch.zeros(1, device=dense_device))

    def forward(self, sparse: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        factor_rows = self.factor_tables(sparse).to_dict()
        bias_rows = self.bias_tables(sparse).to_dict()
        factors = torch.stack([factor_rows[f] for f in self.features], dim=1)  # [B, F, D]
        biases = torch.cat([bias_rows[f] for f in self.features], dim=1)  # [B, F * BIAS_WIDTH]
        squares = factors.pow(2).sum(dim=(1, 2))
        pairwise = 0.5 * (factors.sum(dim=1).pow(2).sum(dim=1) - squares)
        logits = self.bias + biases.sum(dim=1) + pairwise
        return logits, squares + biases.pow(2).sum(dim=1)


class RankerOutput(NamedTuple):
    """Both heads of a ``DLRMRanker``; ``logits`` is what every scorer uses.

    Attributes:
        network: ``[B]`` logits of the DLRM / DCNv2 network.
        factorization: ``[B]`` logits of the factorization head, None without one.
        factor_squared_norms: ``[B]`` summed squared norms of the head's looked-up rows, None without one.
        replicas: ``model.replicas`` tensors ``[B]``, each replica network's logits (``network`` is their
            mean), None with a single network.
    """

    network: torch.Tensor
    factorization: torch.Tensor | None = None
    factor_squared_norms: torch.Tensor | None = None
    replicas: tuple[torch.Tensor, ...] | None = None

    @property
    def logits(self) -> torch.Tensor:
        """``[B]``: the network's logits, or the mean of both heads' logits."""
        if self.factorization is None:
            return self.network
        return 0.5 * (self.network + self.factorization)


class DLRMRanker(nn.Module):
    """DLRM (dot interaction) or DCNv2 (low-rank cross network) CTR ranker over a ``CTRBatch``.

    Wraps ``torchrec.models.dlrm.DLRM`` / ``DLRM_DCN`` so that every caller passes one typed batch and gets
    one logit per row. The embedding tables may live on ``meta`` (to be sharded by DMP) while the dense
    arches live on ``dense_device``. With ``cfg.factorization_head`` a :class:`FactorizationHead` scores
    beside the network and the logit is the mean of both (``RankerOutput.logits``).

    Args:
        cfg: model config; ``dense_arch_layer_sizes[-1]`` must equal ``embedding_dim`` (checked by
            ``DLRMConfig.validate``) and ``over_arch_layer_sizes[-1]`` must be 1.
        embedding_bag_collection: the sparse tables, e.g. from ``build_embedding_bag_collection``.
        dense_device: device of the dense, over and interaction arches.
        factorization_tables: the head's tables (``build_factorization_tables``), exactly when the config
            has a head.

    Example::

        ranker = build_ranker(cfg, counts, torch.device("cpu"))
        logits = ranker(batch)  # [B]
        heads = ranker(batch, heads=True)  # RankerOutput
    """

    def __init__(
        self,
        cfg: DLRMConfig,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_device: torch.device | None = None,
        factorization_tables: FactorizationTables | None = None,
    ) -> None:
        super().__init__()
        if (cfg.factorization_head is None) != (factorization_tables is None):
            raise ValueError(
                "DLRMRanker: pass factorization_tables exactly when the config has a factorization_head."
            )
        self.interaction = cfg.interaction
        self.dense_in_features = len(cfg.dense_features)
        self.model: DLRM = _network(cfg, embedding_bag_collection, dense_device)
        # Replica networks look embeddings up through self.model's sparse arch (one set of tables, one
        # lookup per batch; DMP shards the tables once): their own sparse arch is removed.
        self.replicas = nn.ModuleList()
        for _ in range(cfg.replicas - 1):
            replica = _network(cfg, embedding_bag_collection, dense_device)
            del replica.sparse_arch
            self.replicas.append(replica)
        self.factorization: FactorizationHead | None = None
        if cfg.factorization_head is not None and factorization_tables is not None:
            self.factorization = FactorizationHead(cfg.factorization_head, factorization_tables, dense_device)

    @overload
    def forward(self, batch: CTRBatch) -> torch.Tensor: ...

    @overload
    def forward(self, batch: CTRBatch, heads: Literal[False]) -> torch.Tensor: ...

    @overload
    def forward(self, batch: CTRBatch, heads: Literal[True]) -> RankerOutput: ...

    def forward(self, batch: CTRBatch, heads: bool = False) -> torch.Tensor | RankerOutput:
        """Score a batch.

        Args:
            batch: ``dense [B, F_d]`` float32 and a KJT with B bags for each ``cfg.sparse_features`` key.
            heads: return every head's output (training needs each head's logits) instead of the logits.

        Returns:
            ``[B]`` float32 logits (apply ``sigmoid`` for click probabilities), or a :class:`RankerOutput`.
        """
        if len(self.replicas):
            embedded = self.model.sparse_arch(batch.sparse)
            towers = tuple(
                _tower(network, batch.dense, embedded).squeeze(-1) for network in (self.model, *self.replicas)
            )
            output = RankerOutput(torch.stack(towers).mean(dim=0), replicas=towers)
            return output if heads else output.logits
        network: torch.Tensor = self.model(dense_features=batch.dense, sparse_features=batch.sparse)
        output = RankerOutput(network.squeeze(-1))
        if self.factorization is not None:
            output = RankerOutput(output.network, *self.factorization(batch.sparse))
        return output if heads else output.logits


def _network(cfg: DLRMConfig, tables: EmbeddingBagCollection, dense_device: torch.device | None) -> DLRM:
    if cfg.interaction == "dcn":
        return DLRM_DCN(
            embedding_bag_collection=tables,
            dense_in_features=len(cfg.dense_features),
            dense_arch_layer_sizes=list(cfg.dense_arch_layer_sizes),
            over_arch_layer_sizes=list(cfg.over_arch_layer_sizes),
            dcn_num_layers=cfg.dcn_num_layers,
            dcn_low_rank_dim=cfg.dcn_low_rank_dim,
            dense_device=dense_device,
        )
    return DLRM(
        embedding_bag_collection=tables,
        dense_in_features=len(cfg.dense_features),
        dense_arch_layer_sizes=list(cfg.dense_arch_layer_sizes),
        over_arch_layer_sizes=list(cfg.over_arch_layer_sizes),
        dense_device=dense_device,
    )


def _tower(network: DLRM, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
    """``network``'s dense, interaction and over arches on already looked-up embeddings (DLRM.forward
    without its sparse arch): ``[B, 1]`` logits."""
    interacted = network.inter_arch(dense_features=network.dense_arch(dense), sparse_features=embedded)
    logits: torch.Tensor = network.over_arch(interacted)
    return logits


def build_ranker(
    cfg: DLRMConfig,
    counts: Mapping[str, int],
    table_device: torch.device,
    dense_device: torch.device | None = None,
) -> DLRMRanker:
    """A ``DLRMRanker`` with all its tables (the network's and the factorization head's) on ``table_device``.

    Args:
        cfg: model config.
        counts: manifest counts that size the tables.
        table_device: ``meta`` for DMP to shard and materialise, or a real device for a plain ranker.
        dense_device: device of the dense arches; default ``table_device``.
    """
    return DLRMRanker(
        cfg,
        build_embedding_bag_collection(cfg, counts, table_device),
        dense_device=table_device if dense_device is None else dense_device,
        factorization_tables=build_factorization_tables(cfg, counts, table_device),
    )
