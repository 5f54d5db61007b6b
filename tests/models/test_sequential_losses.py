"""Next-item losses and the alignment InfoNCE against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from models.sequential.losses import (
    full_softmax_loss,
    info_nce,
    popularity_log_q,
    sampled_softmax_loss,
)


def test_full_softmax_excludes_reserved_items() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    items = torch.tensor([[50.0, 50.0], [50.0, 50.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([2, 4])
    logits = queries @ items[2:].T  # padding / OOV rows must not count even with huge scores
    expected = [
        math.log(sum(math.exp(v) for v in logits[m].tolist())) - logits[m, t - 2].item()
        for m, t in enumerate(targets.tolist())
    ]
    assert full_softmax_loss(queries, targets, items).item() == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_popularity_log_q_is_a_distribution_over_real_items() -> None:
    counts = torch.tensor([0.0, 0.0, 3.0, 1.0, 0.0])
    log_q = popularity_log_q(counts)
    q = log_q.exp()
    assert torch.isneginf(log_q[:2]).all()
    assert q.sum().item() == pytest.approx(1.0)
    assert q[2:].tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7])


def test_sampled_softmax_with_log_q_matches_hand_computation() -> None:
    queries = torch.tensor([[1.0, 2.0]])
    items = torch.tensor([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    targets = torch.tensor([2])
    negatives = torch.tensor([3, 4, 2])  # the last one is an accidental hit of the target
    log_q = torch.log(torch.tensor([1e-9, 1e-9, 0.5, 0.3, 0.2]))
    s = {2: 1.0, 3: 2.0, 4: 3.0}
    corrected = [s[2] - math.log(0.5), s[3] - math.log(0.3), s[4] - math.log(0.2)]
    expected = -corrected[0] + math.log(sum(math.exp(v) for v in corrected))
    loss = sampled_softmax_loss(queries, targets, items, negatives, log_q)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    plain = [s[2], s[3], s[4]]
    uncorrected = sampled_softmax_loss(queries, targets, items, negatives, None)
    assert uncorrected.item() == pytest.approx(
        -plain[0] + math.log(sum(math.exp(v) for v in plain)), rel=1e-6
    )
    assert loss.item() != pytest.approx(uncorrected.item())


def test_uniform_q_correction_changes_nothing() -> None:
    torch.manual_seed(0)
    queries, items = torch.randn(6, 4), torch.randn(10, 4)
    targets, negatives = torch.randint(2, 10, (6,)), torch.randint(2, 10, (5,))
    uniform = popularity_log_q(torch.zeros(10))
    with_q = sampled_softmax_loss(queries, targets, items, negatives, uniform)
    without = sampled_softmax_loss(queries, targets, items, negatives, None)
    assert with_q.item() == pytest.approx(without.item(), rel=1e-5)


def test_info_nce_matches_a_loop_over_users() -> None:
    torch.manual_seed(1)
    first, second, tau = torch.randn(4, 3), torch.randn(4, 3), 0.2

    def cos(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a @ b) / (a.norm() * b.norm()))

    def direction(x: torch.Tensor, y: torch.Tensor) -> float:
        total = 0.0
        for i in range(4):
            logits = [cos(x[i], y[j]) / tau for j in range(4)]
            total += -logits[i] + math.log(sum(math.exp(v) for v in logits))
        return total / 4

    expected = (direction(first, second) + direction(second, first)) / 2
    assert info_nce(first, second, tau).item() == pytest.approx(expected, rel=1e-5)
    aligned = info_nce(first, first * 3.0, tau).item()  # same direction: positives win
    assert aligned < expected
