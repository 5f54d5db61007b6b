"""LightningModule around SASRec / MolarNet: all-position next-item training, full-ranking validation.

Training (SASRec-style): a ``[B, L + 1]`` train sequence gives inputs = columns ``:-1`` and targets =
columns ``1:``; every real target position is a training example (one forward pass per user). The loss is the
full softmax over the catalog, or a sampled softmax with log-q correction (``loss: sampled``); Molar adds
``align_weight * InfoNCE(u_content, u_id)`` over the users' newest positions.

Validation / test: user vectors of the split's histories, then full ranking through ``RankingEvaluator``.
"""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from models.sequential.config import SequentialConfig
from models.sequential.evaluate import RankingEvaluator
from models.sequential.losses import (
    full_softmax_loss,
    info_nce,
    popularity_log_q,
    sample_negatives,
    sampled_softmax_loss,
)
from models.sequential.network import MolarNet, SASRec, trim_left_padding
from recsys.offline import SplitEvaluation
from recsys.schema import PADDING_INDEX

VALIDATION_METRIC = "val/ndcg_at_10"
"""Early stopping and best-weights selection monitor this (higher is better)."""
VALIDATION_KS = (10, 20)
"""Cut-offs logged as per-epoch validation curves."""


class SequentialLitModule(pl.LightningModule):
    """Trains a sequence network and evaluates it with the full-ranking protocol.

    Args:
        cfg: model settings.
        network: ``SASRec`` or ``MolarNet`` (built outside, STYLE 2.3).
        item_counts: ``[N]`` training interactions per item index (the sampled softmax's ``q``).
        evaluator: full-ranking evaluator of the snapshot; ``None`` skips validation metrics (benchmarks).
    """

    def __init__(
        self,
        cfg: SequentialConfig,
        network: SASRec | MolarNet,
        item_counts: np.ndarray,
        evaluator: RankingEvaluator | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.network = network
        self.evaluator = evaluator
        self.register_buffer("log_q", popularity_log_q(torch.as_tensor(item_counts)), persistent=False)
        self._outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.evaluations: dict[str, SplitEvaluation] = {}

    def compute_loss(self, sequences: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total loss, {part: value})`` of a ``[B, L + 1]`` batch; no logging, so no Trainer needed."""
        sequences = trim_left_padding(sequences)
        inputs, targets = sequences[:, :-1], sequences[:, 1:]
        states = self.network.states(inputs)
        real = targets != PADDING_INDEX
        queries, wanted = states.hidden[real], targets[real]
        items = self.network.item_vectors()
        if self.cfg.loss == "full":
            next_item = full_softmax_loss(queries, wanted, items)
        else:
            log_q = self.get_buffer("log_q")
            negatives = sample_negatives(log_q, self.cfg.num_negatives).to(sequences.device)
            next_item = sampled_softmax_loss(
                queries, wanted, items, negatives, log_q if self.cfg.logq_correction else None
            )
        parts = {"next_item": next_item}
        if self.cfg.molar is not None and states.content is not None and states.ids is not None:
            users = inputs[:, -1] != PADDING_INDEX
            align = info_nce(states.content[users, -1], states.ids[users, -1], self.cfg.molar.temperature)
            parts["align"] = align
            return next_item + self.cfg.molar.align_weight * align, parts
        return next_item, parts

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (sequences,) = batch
        loss, parts = self.compute_loss(sequences)
        size = int(sequences.shape[0])
        self.log("train/loss", loss, batch_size=size, prog_bar=True, on_step=True, on_epoch=True)
        for name, value in parts.items():
            self.log(f"train/{name}_loss", value, batch_size=size, on_step=False, on_epoch=True)
        return loss

    def build_optimizer(self) -> torch.optim.Optimizer:
        # SASRec's Adam (beta2 = 0.98, as in the paper's code).
        return torch.optim.Adam(
            self.network.parameters(), lr=self.cfg.lr, betas=(0.9, 0.98), weight_decay=self.cfg.weight_decay
        )

    def configure_optimizers(self) -> Any:
        optimizer = self.build_optimizer()
        warmup = self.cfg.warmup_steps
        if warmup == 0:
            return optimizer
        # Linear warmup per optimizer step: the first updates of a fresh transformer are the noisiest.
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def _collect(self, batch: list[torch.Tensor]) -> None:
        users, histories = batch
        vectors = self.network.user_vectors(trim_left_padding(histories))
        self._outputs.append((users.cpu(), vectors.detach().cpu()))

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self._collect(batch)

    def _evaluate(self, split: str, full: bool) -> SplitEvaluation | None:
        outputs, self._outputs = self._outputs, []
        if self.evaluator is None or not outputs:
            return None
        users = torch.cat([u for u, _ in outputs]).numpy()
        vectors = torch.cat([v for _, v in outputs]).float().numpy()
        with torch.no_grad():
            items = self.network.item_vectors().detach().cpu().float().numpy()
        return self.evaluator.evaluate(split, users, vectors, items, beyond_accuracy=full)

    def on_validation_epoch_end(self) -> None:
        evaluation = self._evaluate("valid", full=False)
        if evaluation is None:
            return
        overall = evaluation.metrics[evaluation.metrics["bucket"] == "all"]
        shown = overall[overall["k"].isin(VALIDATION_KS)]
        for metric, k, value in zip(shown["metric"], shown["k"], shown["value"], strict=True):
            self.log(f"val/{metric}_at_{k}", float(value), prog_bar=metric == "ndcg")

    def on_test_epoch_end(self) -> None:
        evaluation = self._evaluate("test", full=True)
        if evaluation is not None:
            self.evaluations["test"] = evaluation


class BestWeights(pl.Callback):
    """Keeps the weights of the best validation epoch in memory and puts them back when fitting ends, so
    test metrics and exported vectors come from the early-stopping optimum, not the last epoch."""

    def __init__(self, monitor: str = VALIDATION_METRIC) -> None:
        self.monitor = monitor
        self.best_score = float("-inf")
        self.best_epoch = -1
        self.best_state: dict[str, Any] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        score = float(trainer.callback_metrics[self.monitor])
        if score > self.best_score:
            self.best_score, self.best_epoch = score, trainer.current_epoch
            self.best_state = copy.deepcopy(pl_module.state_dict())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.best_state is not None:
            pl_module.load_state_dict(self.best_state)
