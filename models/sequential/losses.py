"""Next-item losses (full softmax, sampled softmax with log-q correction) and the InfoNCE alignment loss.

Shapes: M training positions (real targets only), D width, N item indices, S sampled negatives, B users.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from recsys.schema import FIRST_INDEX


def full_softmax_loss(queries: torch.Tensor, targets: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the target over the whole catalog of real items.

    ``loss_m = logsumexp_j(q_m . v_j) - q_m . v_{t_m}`` over the real items ``j >= FIRST_INDEX``: the
    reserved indices (padding, OOV) are left out of the softmax (their columns are never computed), so they
    can never absorb probability mass.

    Args:
        queries: ``[M, D]`` next-item queries.
        targets: ``[M]`` int64 target item indices (>= FIRST_INDEX).
        items: ``[N, D]`` item vectors.
    """
    return F.cross_entropy(queries @ items[FIRST_INDEX:].T, targets - FIRST_INDEX)


def popularity_log_q(counts: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """``log q`` ``[N]`` of the popularity sampling distribution ``q_i ∝ (count_i + 1)^power`` over real items
    (reserved indices get ``q = 0``, ``log q = -inf``: they are never sampled)."""
    weights = (counts.double() + 1.0) ** power
    weights[:FIRST_INDEX] = 0.0
    return torch.log(weights / weights.sum()).float()


def sample_negatives(log_q: torch.Tensor, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``[S]`` item indices drawn with replacement from ``q = exp(log_q)`` (shared by the whole batch)."""
    return torch.multinomial(log_q.exp(), num, replacement=True, generator=generator)


def sampled_softmax_loss(
    queries: torch.Tensor,
    targets: torch.Tensor,
    items: torch.Tensor,
    negatives: torch.Tensor,
    log_q: torch.Tensor | None,
) -> torch.Tensor:
    """Sampled softmax over ``[target, S shared negatives]`` with optional log-q correction.

    Every candidate's logit ``s_j = query . item_j`` becomes ``s_j - log q_j`` when ``log_q`` is given
    (Bengio & Senecal 2008; Yi et al. 2019): sampling popular items more often would otherwise bias the model
    against them, and the correction makes the sampled softmax a consistent estimate of the full one. A
    negative equal to the row's target (an accidental hit) is removed (logit ``-inf``).

    Args:
        queries: ``[M, D]``.
        targets: ``[M]`` int64.
        items: ``[N, D]``.
        negatives: ``[S]`` int64 sampled item indices.
        log_q: ``[N]`` log sampling probability, or ``None`` for no correction.
    """
    positive = (queries * items[targets]).sum(-1, keepdim=True)
    negative = queries @ items[negatives].T
    if log_q is not None:
        positive = positive - log_q[targets].unsqueeze(-1)
        negative = negative - log_q[negatives].unsqueeze(0)
    negative = negative.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(-1), float("-inf"))
    logits = torch.cat([positive, negative], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(targets))


def info_nce(first: torch.Tensor, second: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two views of the same B users, in-batch negatives.

    With ``a = normalize(first)``, ``b = normalize(second)`` and ``S = a @ b^T / temperature``, the loss is
    ``(CE(S, diag) + CE(S^T, diag)) / 2``: user i's two representations are the positive pair, the other
    B - 1 users of the batch the negatives, in both directions.

    Args:
        first: ``[B, D]`` (content-based user model).
        second: ``[B, D]`` (ID-based user model).
        temperature: softmax temperature > 0.
    """
    a = F.normalize(first, dim=-1)
    b = F.normalize(second, dim=-1)
    logits = a @ b.T / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
