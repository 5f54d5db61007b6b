"""Plain ``nn.Module`` pieces of the DLRM ranker: the TorchRec embedding tables and the DLRM / DCNv2 network.

No Lightning, no I/O, no loss and no process group here (STYLE 2.2): the LightningModule, the sharding code,
the pyfunc and the tests all build on these. Shapes: B batch size, F_d dense features, F_s sparse features
(KJT keys), D ``embedding_dim``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, DLRM_DCN
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from models.dlrm.batch import CTRBatch
from models.dlrm.config import DLRMConfig

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


class DLRMRanker(nn.Module):
    """DLRM (dot interaction) or DCNv2 (low-rank cross network) CTR ranker over a ``CTRBatch``.

    Wraps ``torchrec.models.dlrm.DLRM`` / ``DLRM_DCN`` so that every caller passes one typed batch and gets
    one logit per row. The embedding tables may live on ``meta`` (to be sharded by DMP) while the dense
    arches live on ``dense_device``.

    Args:
        cfg: model config; ``dense_arch_layer_sizes[-1]`` must equal ``embedding_dim`` (checked by
            ``DLRMConfig.validate``) and ``over_arch_layer_sizes[-1]`` must be 1.
        embedding_bag_collection: the sparse tables, e.g. from ``build_embedding_bag_collection``.
        dense_device: device of the dense, over and interaction arches.

    Example::

        ebc = build_embedding_bag_collection(cfg, counts, torch.device("cpu"))
        logits = DLRMRanker(cfg, ebc)(batch)  # [B]
    """

    def __init__(
        self,
        cfg: DLRMConfig,
        embedding_bag_collection: EmbeddingBagCollection,
        dense_device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.interaction = cfg.interaction
        self.dense_in_features = len(cfg.dense_features)
        self.model: DLRM
        if cfg.interaction == "dcn":
            self.model = DLRM_DCN(
                embedding_bag_collection=embedding_bag_collection,
                dense_in_features=self.dense_in_features,
                dense_arch_layer_sizes=list(cfg.dense_arch_layer_sizes),
                over_arch_layer_sizes=list(cfg.over_arch_layer_sizes),
                dcn_num_layers=cfg.dcn_num_layers,
                dcn_low_rank_dim=cfg.dcn_low_rank_dim,
                dense_device=dense_device,
            )
        else:
            self.model = DLRM(
                embedding_bag_collection=embedding_bag_collection,
                dense_in_features=self.dense_in_features,
                dense_arch_layer_sizes=list(cfg.dense_arch_layer_sizes),
                over_arch_layer_sizes=list(cfg.over_arch_layer_sizes),
                dense_device=dense_device,
            )

    def forward(self, batch: CTRBatch) -> torch.Tensor:
        """Score a batch.

        Args:
            batch: ``dense [B, F_d]`` float32 and a KJT with B bags for each ``cfg.sparse_features`` key.

        Returns:
            ``[B]`` float32 logits (apply ``sigmoid`` for click probabilities).
        """
        logits: torch.Tensor = self.model(dense_features=batch.dense, sparse_features=batch.sparse)
        return logits.squeeze(-1)
