"""LightningModule around the sharded DLRM ranker: BCE training, AUC / GAUC / LogLoss evaluation.

The DMP is created in ``configure_model`` (after the strategy has made the process group), never in
``__init__`` (STYLE 2.3). Tables are updated by FBGEMM's fused row-wise Adagrad inside backward; the optimizer
returned to Lightning updates only the dense weights (Adam) and carries the fused one so both are saved and
restored together. Use it with ``models.dlrm.strategy.TorchRecStrategy``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingPlan
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.dlrm.batch import CTRBatch
from models.dlrm.config import DLRMConfig
from models.dlrm.data import CTRDataModule
from models.dlrm.network import RankerOutput
from models.dlrm.sharding import shard_ranker
from recsys.metrics.classification import auc, gauc, log_loss

USER_FEATURE = "user_idx"
"""KJT key whose id groups rows for GAUC (per-user AUC)."""
NO_USER = -1
LIST_NDCG = "ndcg_at_10"
LIST_NDCG_K = 10
NETWORK_SUFFIX = "_network"
FACTORIZATION_SUFFIX = "_factorization"
"""With a factorization head, ``<stage>/auc<suffix>`` is each head's AUC alone beside the ranker's."""


def first_ids(kjt: KeyedJaggedTensor, key: str) -> torch.Tensor:
    """The first id of each bag of ``key``: ``[B]`` int64, ``NO_USER`` for empty bags.

    Single-id features (``user_idx``) have one id per bag; this picks it without a per-row loop.
    """
    jagged = kjt[key]
    lengths = jagged.lengths()
    offsets = jagged.offsets()[:-1]
    ids = torch.full_like(lengths, NO_USER, dtype=torch.int64)
    present = lengths > 0
    ids[present] = jagged.values()[offsets[present]].to(torch.int64)
    return ids


def ordinal_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ratings: torch.Tensor,
    cuts: torch.Tensor,
    shifts: torch.Tensor,
) -> torch.Tensor:
    """BCE on the label and on "rating >= cut" for each cut, all through the one label logit.

    A cumulative-link (proportional-odds) model: ``logit P(rating >= cut_k) = logit + shift_k``, so the
    network's output stays the label's logit (the scoring contract does not change) while every rating
    level teaches it. On MovieLens-100K the graded rating carries more than its ``>= 4`` threshold: a
    biased MF ranks the test split better trained this way than on the 0/1 label (AUC 0.792 vs 0.785).
    Rows without a rating (``NaN``, e.g. sampled negatives) contribute only their label term.

    Args:
        logits: ``[B]`` label logits.
        labels: ``[B]`` 0/1 labels.
        ratings: ``[B]`` ratings, ``NaN`` where unknown.
        cuts: ``[K]`` rating levels.
        shifts: ``[K]`` logit shifts from the label to each cut (``CTRDataModule.rating_cut_shifts``).

    Returns:
        ``[]`` mean BCE over the label terms and the known cut terms.
    """
    rated = ~torch.isnan(ratings)
    cut_logits = logits[:, None] + shifts[None, :]
    cut_targets = (ratings[:, None] >= cuts[None, :]).to(logits.dtype)
    label_terms = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
    cut_terms = F.binary_cross_entropy_with_logits(cut_logits, cut_targets, reduction="none")
    known = rated[:, None].to(logits.dtype).expand_as(cut_terms)
    return (label_terms + (cut_terms * known).sum()) / (labels.numel() + known.sum())


def dense_optimizer_factory(cfg: DLRMConfig) -> Callable[[Any], torch.optim.Optimizer]:
    """Adam for the dense (non-table) weights; shared with the benchmark's plain loop so both train alike."""
    lr, weight_decay = cfg.optim.dense_lr, cfg.optim.dense_weight_decay

    def make(params: Any) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)

    return make


class DLRMLitModule(pl.LightningModule):
    """Trains and evaluates a sharded ``DLRMRanker``.

    Args:
        cfg: model config (arches, tables, optimizer, sharding).
        counts: manifest counts that size the tables, e.g. ``{"num_users": 945, ...}``.

    Logs ``train/loss`` per step and ``val/auc``, ``val/gauc``, ``val/logloss`` (``test/...``) per epoch,
    computed over the rows of all ranks; with a factorization head also ``val/auc_network`` and
    ``val/auc_factorization``, each head alone.
    """

    def __init__(self, cfg: DLRMConfig, counts: Mapping[str, int]) -> None:
        super().__init__()
        self.cfg = cfg
        self.counts = dict(counts)
        self.model: DistributedModelParallel | None = None
        self.plan: ShardingPlan | None = None
        self._eval_outputs: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        # Ordinal objective only: ``[K]`` rating levels and their logit shifts, set by ``setup``.
        self.cut_levels: torch.Tensor | None = None
        self.cut_shifts: torch.Tensor | None = None

    def setup(self, stage: str) -> None:
        """The ordinal objective's per-cut shifts, from the attached ``CTRDataModule``'s training split."""
        if self.cfg.objective != "ordinal" or self.cut_shifts is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if not isinstance(datamodule, CTRDataModule):
            raise RuntimeError(
                "model.objective=ordinal trains only with a CTRDataModule (it gives the cut shifts)."
            )
        self.cut_levels = torch.tensor(self.cfg.ordinal_cuts, dtype=torch.float32)
        self.cut_shifts = torch.tensor(datamodule.rating_cut_shifts(), dtype=torch.float32)

    def configure_model(self) -> None:
        """Build the tables on ``meta`` and shard them with DMP; a no-op when already built (idempotent)."""
        if self.model is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
        sharded = shard_ranker(self.cfg, self.counts, device)
        self.model, self.plan = sharded.model, sharded.plan

    def _dmp(self) -> DistributedModelParallel:
        if self.model is None:
            raise RuntimeError("DLRMLitModule.configure_model() has not run: no model yet.")
        return self.model

    def forward(self, batch: CTRBatch) -> torch.Tensor:
        """``[B]`` logits for a batch."""
        logits: torch.Tensor = self._dmp()(batch)
        return logits

    def score(self, batch: CTRBatch) -> torch.Tensor:
        """Ranker contract: ``[B]`` click probabilities."""
        return torch.sigmoid(self(batch))

    def compute_loss(self, batch: CTRBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mean loss [], logits [B])``; no logging, so usable outside a Trainer.

        The objective's loss (BCE-with-logits, or :func:`ordinal_loss` with ``objective=ordinal``, which
        needs ``batch.ratings`` and the ``cut_shifts`` set by :meth:`setup`) of the network's logits; with a
        factorization head, plus the same loss of the head's own logits and its L2 term. Each head learns to
        predict alone, so their mean is an average of two rankers rather than one co-adapted sum; with
        ``model.replicas`` > 1 the loss is the sum of each replica network's own loss, for the same reason.
        """
        output: RankerOutput = self._dmp()(batch, heads=True)
        if output.replicas is not None:
            # each replica learns alone (its own loss), so the mean averages independent rankers
            loss = torch.stack([self._objective(logits, batch) for logits in output.replicas]).sum()
        else:
            loss = self._objective(output.network, batch)
        head = self.cfg.factorization_head
        if head is not None and output.factorization is not None and output.factor_squared_norms is not None:
            loss = loss + self._objective(output.factorization, batch)
            loss = loss + head.l2 * output.factor_squared_norms.mean()
        return loss, output.logits

    def _objective(self, logits: torch.Tensor, batch: CTRBatch) -> torch.Tensor:
        if self.cfg.list_size is not None:
            return listwise_loss(logits, batch.labels, self.cfg.list_size)
        if self.cfg.objective != "ordinal":
            return F.binary_cross_entropy_with_logits(logits, batch.labels)
        if batch.ratings is None or self.cut_levels is None or self.cut_shifts is None:
            raise RuntimeError(
                "model.objective=ordinal: the batch has no ratings or setup() gave no cut shifts."
            )
        cuts = self.cut_levels.to(device=logits.device, dtype=logits.dtype)
        shifts = self.cut_shifts.to(device=logits.device, dtype=logits.dtype)
        return ordinal_loss(logits, batch.labels, batch.ratings, cuts, shifts)

    def training_step(self, batch: CTRBatch, batch_idx: int) -> torch.Tensor:
        loss, _ = self.compute_loss(batch)
        if self._logs_this_step():
            self.log("train/loss", loss, batch_size=batch.batch_size, prog_bar=True)
        return loss

    def _logs_this_step(self) -> bool:
        """Whether the trainer hands this step's metrics to its loggers (every ``log_every_n_steps``).

        ``self.log`` also re-files Lightning's whole result collection on every call (about 1,800 Python
        calls a step, a few per cent of a CPU step) for values no logger would see. The test is Lightning's
        own (the step about to complete, counted from 1), so the logged steps and values are unchanged.
        """
        trainer = self._trainer
        if trainer is None:
            return True
        every = int(trainer.log_every_n_steps)  # type: ignore[attr-defined]  # set by its logger connector
        return every > 0 and (trainer.global_step + 1) % every == 0

    def configure_optimizers(self) -> CombinedOptimizer:
        """Adam over the dense weights plus DMP's fused table optimizer, combined into one KeyedOptimizer.

        The fused optimizer's ``step`` does nothing (tables were updated in backward) but it is part of the
        combination so its state is checkpointed and its learning rate follows schedulers.
        """
        model = self._dmp()
        dense_params = dict(in_backward_optimizer_filter(model.named_parameters()))
        dense = KeyedOptimizerWrapper(dense_params, dense_optimizer_factory(self.cfg))
        return CombinedOptimizer([model.fused_optimizer, dense])

    def _collect(self, stage: str, batch: CTRBatch) -> None:
        output: RankerOutput = self._dmp()(batch, heads=True)
        if batch.groups is not None:
            users = batch.groups
        elif USER_FEATURE in set(batch.sparse.keys()):
            users = first_ids(batch.sparse, USER_FEATURE)
        else:
            users = torch.full_like(batch.labels, NO_USER, dtype=torch.int64)
        # [B, columns]: the ranker's logits, then (with a factorization head) each head's alone, so a run
        # shows what the head adds to the network; one gather per stage carries them all
        scored = [output.logits]
        if output.factorization is not None:
            scored += [output.network, output.factorization]
        logits = torch.stack(scored, dim=1).detach()
        self._eval_outputs.setdefault(stage, []).append((logits.cpu(), batch.labels.cpu(), users.cpu()))

    def validation_step(self, batch: CTRBatch, batch_idx: int) -> None:
        self._collect("val", batch)

    def test_step(self, batch: CTRBatch, batch_idx: int) -> None:
        self._collect("test", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, stage: str) -> None:
        head_suffixes = () if self.cfg.factorization_head is None else (NETWORK_SUFFIX, FACTORIZATION_SUFFIX)
        outputs = self._eval_outputs.pop(stage, [])
        logits, labels, users = gather_eval_outputs(outputs, columns=1 + len(head_suffixes))
        metrics = classification_metrics(logits[:, 0], labels, users)
        if self.cfg.task == "candidates":
            # one list per user and split: the ranking quality the two-stage stage reports
            metrics[LIST_NDCG] = grouped_ndcg(logits[:, 0], labels, users, LIST_NDCG_K)
        for name, value in metrics.items():
            self.log(f"{stage}/{name}", value, sync_dist=False)
        for column, suffix in enumerate(head_suffixes, start=1):
            value = auc(labels, logits[:, column]) if labels.size else float("nan")
            self.log(f"{stage}/auc{suffix}", value, sync_dist=False)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        """A ``CTRBatch`` moves itself (dense, KJT, labels), and not at all when it is already there.

        Lightning's generic move walks the dataclass and rebuilds the KJT every step, which costs a few
        hundred microseconds a step in lock-stepped multi-process training (``recsys bench dlrm``).
        """
        if isinstance(batch, CTRBatch):
            return batch if batch.dense.device == device else batch.to(device, non_blocking=True)
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dlrm_plan"] = None if self.plan is None else str(self.plan)


def listwise_loss(logits: torch.Tensor, labels: torch.Tensor, list_size: int) -> torch.Tensor:
    """Softmax cross-entropy over each candidate list (ListNet with the engaged items as the target).

    ``[B]`` logits and 0/1 labels hold ``B / list_size`` whole lists; each list's target distribution is
    uniform over its positives, and lists without a positive add nothing. Unlike pointwise BCE, the loss
    only cares about the order within a list, which is all the two-stage recommender uses.
    """
    scores = logits.view(-1, list_size)
    targets = labels.view(-1, list_size)
    positives = targets.sum(dim=1)
    per_list = -(targets * F.log_softmax(scores, dim=1)).sum(dim=1) / positives.clamp(min=1.0)
    has_positive = positives > 0
    if not bool(has_positive.any()):
        return scores.sum() * 0.0
    return per_list[has_positive].mean()


def grouped_ndcg(
    scores: np.ndarray[Any, Any], labels: np.ndarray[Any, Any], groups: np.ndarray[Any, Any], k: int
) -> float:
    """Mean NDCG@k of the groups (lists) with a positive, each ordered by descending score (binary gains)."""
    if labels.size == 0:
        return float("nan")
    order = np.lexsort((-scores, groups))
    groups, labels = groups[order], labels[order]
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    ends = np.r_[starts[1:], groups.size]
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    values = []
    for start, end in zip(starts, ends, strict=True):
        gains = labels[start:end]
        positives = int(gains.sum())
        if positives == 0:
            continue
        dcg = float((gains[:k] * discounts[: min(k, end - start)]).sum())
        values.append(dcg / float(discounts[: min(k, positives)].sum()))
    return float(np.mean(values)) if values else float("nan")


def gather_eval_outputs(
    outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], columns: int
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Concatenate this rank's ``(logits [B, columns], labels, users)`` and, with several ranks, those of all
    ranks.

    Metrics such as AUC are not averages of per-rank values, so every rank gets all M rows.

    Returns:
        ``(logits [M, columns] float64, labels [M] float64, users [M] int64)`` over all ranks.
    """
    if outputs:
        logits = torch.cat([o[0] for o in outputs]).double().numpy()
        labels = torch.cat([o[1] for o in outputs]).double().numpy()
        users = torch.cat([o[2] for o in outputs]).numpy()
    else:
        logits, labels = np.zeros((0, columns)), np.zeros(0)
        users = np.zeros(0, dtype=np.int64)
    if dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (logits, labels, users))
        logits = np.concatenate([g[0] for g in gathered])
        labels = np.concatenate([g[1] for g in gathered])
        users = np.concatenate([g[2] for g in gathered])
    return logits, labels, users


def classification_metrics(
    logits: np.ndarray[Any, Any], labels: np.ndarray[Any, Any], users: np.ndarray[Any, Any]
) -> dict[str, float]:
    """``{"auc", "gauc", "logloss"}`` from ``[M]`` logits, 0/1 labels and user ids (GAUC groups by user)."""
    if labels.size == 0:
        return {"auc": float("nan"), "gauc": float("nan"), "logloss": float("nan")}
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    return {
        "auc": auc(labels, logits),
        "gauc": gauc(labels, logits, users),
        "logloss": log_loss(labels, probabilities),
    }
