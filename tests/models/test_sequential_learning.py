"""The models learn a sequential pattern that popularity cannot: on generated walks through a fixed item
permutation, SASRec and Molar (full and sampled softmax) predict the next item far better than most-popular,
and the pieces of the Lightning module (all-position loss, validation ranking) work on them."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from models.sequential.module import SequentialLitModule
from models.sequential.network import build_network
from recsys.schema import FIRST_INDEX
from tests.models.test_sequential_network import small_config

NUM_REAL = 20
NUM_ITEMS = NUM_REAL + FIRST_INDEX
USERS = 64
LENGTH = 9  # MAX_LEN + 1 of small_config


def walks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences where item ``i`` is always followed by ``successor[i]`` (random start per user)."""
    rng = np.random.default_rng(seed)
    successor = np.full(NUM_ITEMS, -1, dtype=np.int64)
    successor[FIRST_INDEX:] = FIRST_INDEX + rng.permutation(NUM_REAL)
    sequences = np.zeros((USERS, LENGTH), dtype=np.int64)
    sequences[:, 0] = rng.integers(FIRST_INDEX, NUM_ITEMS, USERS)
    for t in range(1, LENGTH):
        sequences[:, t] = successor[sequences[:, t - 1]]
    # a few short users, left-padded, so padding is part of training
    sequences[: USERS // 4, : LENGTH // 2] = 0
    return sequences, successor


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: a second intra-op thread only adds synchronisation (10x slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(architecture: str, loss: str, steps: int = 80) -> tuple[float, float, float, float]:
    torch.manual_seed(0)
    sequences, successor = walks(seed=1)
    cfg = small_config(architecture, loss=loss, num_negatives=6, dropout=0.1)
    content = None
    if architecture == "molar":
        # content that carries no sequential signal: the ID tower has to learn the walk
        vectors = np.random.default_rng(2).normal(size=(NUM_ITEMS, 5)).astype(np.float32)
        content = (vectors, np.arange(NUM_ITEMS) >= FIRST_INDEX)
    network = build_network(cfg, NUM_ITEMS, content)
    counts = np.bincount(sequences.ravel(), minlength=NUM_ITEMS).astype(np.float64)
    counts[:FIRST_INDEX] = 0
    module = SequentialLitModule(cfg, network, counts)
    optimizer = torch.optim.Adam(network.parameters(), lr=0.01)
    batch = torch.from_numpy(sequences)
    first_loss = last_loss = float("nan")
    for step in range(steps):
        loss_value, _ = module.compute_loss(batch)
        optimizer.zero_grad()
        loss_value.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        if step == 0:
            first_loss = loss_value.item()
        last_loss = loss_value.item()
    # next item after each user's last item: the model vs most-popular (hit@1)
    network.eval()
    with torch.no_grad():
        scores = network.user_vectors(batch[:, 1:]) @ network.item_vectors().T
    scores[:, :FIRST_INDEX] = -torch.inf
    truth = successor[sequences[:, -1]]
    model_hits = float((scores.argmax(dim=1).numpy() == truth).mean())
    popular = int(np.argmax(counts))
    popularity_hits = float((truth == popular).mean())
    return first_loss, last_loss, model_hits, popularity_hits


@pytest.mark.parametrize(
    ("architecture", "loss"), [("sasrec", "full"), ("sasrec", "sampled"), ("molar", "full")]
)
def test_learns_the_walk_and_beats_popularity(architecture: str, loss: str) -> None:
    first_loss, last_loss, model_hits, popularity_hits = train(architecture, loss)
    assert last_loss < 0.3 * first_loss
    assert popularity_hits <= 0.2
    assert model_hits >= 0.9
