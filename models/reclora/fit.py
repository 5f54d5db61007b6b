"""Training and scoring loops of the RecLoRA language model over pre-tokenized prompts.

A plain PyTorch loop rather than a Lightning Trainer: the ablation trains up to four small adapters per
seed in one process, each for a few hundred steps on pre-built tensors, and the Trainer's per-fit setup
(loggers, strategy, progress) would cost more than some of these fits. Everything in the hot path is a
tensor op on pre-tokenized rows; no text is touched after :func:`models.reclora.prompts.tokenize`.

Shapes: N samples, T tokens, D_u user-vector width.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from rich.progress import track
from torch import nn

from models.reclora.config import TrainConfig
from models.reclora.network import RecLoRAModel
from models.reclora.prompts import TokenizedPrompts
from recsys.console import console

# Seconds between progress-bar refreshes.
_PROGRESS_INTERVAL_S = 2.0


@dataclass(frozen=True)
class LMData:
    """What the LM needs per sample: tokens ``[N, T]``, labels ``[N]`` float32, user vectors ``[N, D_u]``,
    and optionally the cached frozen-prefix states ``[N, T, H]`` (:func:`with_prefix`)."""

    prompts: TokenizedPrompts
    labels: torch.Tensor
    user_vectors: torch.Tensor
    prefix: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def batch(
        self, index: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(input_ids, attention_mask, user_vectors, prefix)`` of rows ``index``, cut to their longest
        prompt."""
        input_ids, mask = self.prompts.batch(index)
        prefix = None if self.prefix is None else self.prefix[index, : input_ids.shape[1]]
        return input_ids, mask, self.user_vectors[index], prefix


def with_prefix(model: RecLoRAModel, data: LMData, batch_size: int) -> LMData:
    """``data`` plus the frozen lower blocks' output of every prompt, computed once (see
    ``RecLoRAModel.prefix_blocks``); unchanged when the backbone has no cacheable prefix.

    The states depend only on the frozen backbone and the prompt, so one computation serves every arm, seed
    and epoch that uses these prompts. Memory: ``N * T * H`` float32.
    """
    if model.prefix_blocks == 0:
        return data
    width = int(data.prompts.input_ids.shape[1])
    hidden = int(model.backbone.config.hidden_size)
    states = torch.zeros(len(data), width, hidden)
    model.eval()
    for index in _progress(_batches(torch.arange(len(data)), batch_size, None), "frozen prefix"):
        input_ids, mask = data.prompts.batch(index)
        states[index, : input_ids.shape[1]] = model.prefix_states(input_ids, mask)
    return LMData(data.prompts, data.labels, data.user_vectors, states)


def _progress(batches: list[torch.Tensor], description: str) -> Iterable[torch.Tensor]:
    return track(batches, description=description, console=console, update_period=_PROGRESS_INTERVAL_S)


def _batches(index: torch.Tensor, batch_size: int, limit: int | None) -> list[torch.Tensor]:
    chunks = list(torch.split(index, batch_size))
    return chunks[:limit] if limit is not None else chunks


def train_lm(
    model: RecLoRAModel,
    data: LMData,
    cfg: TrainConfig,
    seed: int,
    *,
    limit_batches: int | None = None,
    description: str = "LM",
) -> list[float]:
    """Fit the trainable parts (LoRA bank, mixer, head) with AdamW on BCE; returns the per-step losses.

    Rows are reshuffled every epoch by ``torch.Generator().manual_seed(seed + epoch)``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    # Frozen backbone: keep its own dropout off; the LoRA dropout follows model.train().
    nn.Module.train(model.backbone, False)
    for layer in model.layers.values():
        layer.dropout.train()
    losses: list[float] = []
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + epoch))
        batches = _batches(order, cfg.batch_size, limit_batches)
        for index in _progress(batches, f"{description} epoch {epoch + 1}/{cfg.epochs}"):
            input_ids, mask, users, prefix = data.batch(index)
            logits = model(input_ids, mask, users, prefix)
            loss: torch.Tensor = F.binary_cross_entropy_with_logits(logits, data.labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            losses.append(float(loss.detach()))
        console.print(f"{description} epoch {epoch + 1}: mean BCE {np.mean(losses[-len(batches) :]):.4f}")
    model.eval()
    return losses


@torch.no_grad()
def score_lm(
    model: RecLoRAModel, data: LMData, batch_size: int, *, description: str = "scoring"
) -> np.ndarray:
    """``[N]`` click probabilities, in row order."""
    model.eval()
    out = []
    for index in _progress(_batches(torch.arange(len(data)), batch_size, None), description):
        input_ids, mask, users, prefix = data.batch(index)
        out.append(torch.sigmoid(model(input_ids, mask, users, prefix)).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)
