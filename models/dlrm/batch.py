"""The batch every DLRM component exchanges: dense features, a KeyedJaggedTensor of sparse ids, labels
(and, for the ordinal objective, raw ratings).

Shapes: B batch size, F_d dense features. The KJT holds one key per sparse feature (in the order of
``DLRMConfig.sparse_features``), each with B bags (length 1 for single ids, any length for multi-hot
categories and recent-item bags). It implements TorchRec's ``Pipelineable`` methods so Lightning can move
it and ``TrainPipelineSparseDist`` can overlap its copy with compute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor


@dataclass(frozen=True)
class CTRBatch:
    dense: torch.Tensor  # [B, F_d] float32
    sparse: KeyedJaggedTensor  # keys = sparse feature names, B bags each
    labels: torch.Tensor  # [B] float32 in {0, 1}
    # [B] float32 raw ratings, NaN where a row has none (sampled negatives); only read for
    # model.objective=ordinal, None otherwise.
    ratings: torch.Tensor | None = None
    # [B] int64 user index of each row when the rows carry one: evaluation groups rows by it (GAUC, the
    # per-list NDCG of a candidate ranker) even when user_idx is not a sparse feature of the model.
    groups: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> CTRBatch:
        return CTRBatch(
            dense=self.dense.to(device=device, non_blocking=non_blocking),
            sparse=self.sparse.to(device=torch.device(device), non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            ratings=None
            if self.ratings is None
            else self.ratings.to(device=device, non_blocking=non_blocking),
            groups=self.groups,
        )

    def pin_memory(self) -> CTRBatch:
        ratings = None if self.ratings is None else self.ratings.pin_memory()
        return CTRBatch(
            self.dense.pin_memory(), self.sparse.pin_memory(), self.labels.pin_memory(), ratings, self.groups
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        self.labels.record_stream(stream)
        if self.ratings is not None:
            self.ratings.record_stream(stream)

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])
