"""SASRec / MolarNet structure: causality, padding invariance, masks, padded-tensor helpers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from models.sequential.config import MolarConfig, SequentialConfig
from models.sequential.data import LengthBucketSampler, append_newest, left_pad
from models.sequential.network import (
    MolarNet,
    SASRec,
    attention_mask,
    build_network,
    encode_users,
    shortest_first,
    trim_left_padding,
)
from recsys.config import typed

NUM_ITEMS = 12
MAX_LEN = 8
DIM = 16


def small_config(architecture: str = "sasrec", **overrides: object) -> SequentialConfig:
    values: dict[str, object] = {
        "name": architecture,
        "family": "sequential",
        "architecture": architecture,
        "max_len": MAX_LEN,
        "hidden_dim": DIM,
        "num_blocks": 2,
        "num_heads": 2,
        "dropout": 0.0,
        "loss": "full",
        "num_negatives": 8,
        "logq_correction": True,
        "lr": 0.01,
        "weight_decay": 0.0,
        "batch_size": 4,
        "bucket_by_length": False,
        "max_epochs": 1,
        "patience": 1,
        "eval_batch_size": 4,
        "few_interactions_max": 2,
        "num_threads": None,
        "seeds": None,
    }
    if architecture == "molar":
        values["molar"] = {
            "modalities": ["text"],
            "projection_hidden": 8,
            "align_weight": 0.5,
            "temperature": 0.2,
        }
    values.update(overrides)
    return typed(SequentialConfig, values, "model")


def networks() -> list[SASRec | MolarNet]:
    torch.manual_seed(0)
    content = np.random.default_rng(0).normal(size=(NUM_ITEMS, 6)).astype(np.float32)
    has_content = np.ones(NUM_ITEMS, dtype=bool)
    has_content[:2] = False
    return [
        build_network(small_config("sasrec"), NUM_ITEMS).eval(),
        build_network(small_config("molar"), NUM_ITEMS, (content, has_content)).eval(),
    ]


@pytest.mark.parametrize("network", networks(), ids=["sasrec", "molar"])
def test_output_at_t_does_not_see_later_items(network: SASRec | MolarNet) -> None:
    items = torch.tensor([[0, 0, 3, 4, 5, 6, 7, 8]])
    changed = items.clone()
    changed[0, 5:] = torch.tensor([9, 10, 11])
    with torch.no_grad():
        before, after = network.states(items).hidden, network.states(changed).hidden
    torch.testing.assert_close(before[:, :5], after[:, :5])
    assert not torch.allclose(before[:, 5:], after[:, 5:])


@pytest.mark.parametrize("network", networks(), ids=["sasrec", "molar"])
def test_left_padding_does_not_change_real_positions(network: SASRec | MolarNet) -> None:
    short = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]])
    with torch.no_grad():
        a, b = network.states(short).hidden, network.states(padded).hidden
        vectors = network.user_vectors(torch.cat([padded, torch.tensor([[0, 0, 0, 0, 0, 0, 0, 7]])]))
    torch.testing.assert_close(a, b[:, 5:])
    assert torch.count_nonzero(b[:, :5]) == 0
    torch.testing.assert_close(vectors[0], a[0, -1])
    assert torch.isfinite(vectors).all()


@pytest.mark.parametrize("network", networks(), ids=["sasrec", "molar"])
def test_batched_encoding_in_length_order_equals_one_user_at_a_time(network: SASRec | MolarNet) -> None:
    rng = np.random.default_rng(3)
    lengths = [8, 1, 3, 8, 2, 5, 1, 7]
    histories = left_pad(pa.array([rng.integers(2, NUM_ITEMS, n).tolist() for n in lengths]), MAX_LEN)
    assert shortest_first(histories).tolist() == [1, 6, 4, 2, 5, 7, 0, 3]
    batched = encode_users(network, histories, batch_size=3)
    for row, history in enumerate(histories):
        alone = encode_users(network, history[None, :], batch_size=1)[0]
        np.testing.assert_allclose(batched[row], alone, rtol=1e-5, atol=1e-5)


def test_sasrec_scores_are_hidden_times_shared_item_embedding() -> None:
    network = networks()[0]
    items = torch.tensor([[0, 2, 3]])
    with torch.no_grad():
        hidden = network.states(items).hidden
        torch.testing.assert_close(network.user_vectors(items), hidden[:, -1])
        assert torch.equal(network.item_vectors(), network.items.weight)
        assert torch.count_nonzero(network.item_vectors()[0]) == 0  # padding row stays zero


def test_molar_items_and_users_are_sums_of_the_two_towers() -> None:
    network = networks()[1]
    assert isinstance(network, MolarNet)
    items = torch.tensor([[0, 2, 3, 4]])
    with torch.no_grad():
        states = network.states(items)
        assert states.content is not None and states.ids is not None
        torch.testing.assert_close(states.hidden, states.content + states.ids)
        fused = network.item_vectors()
        torch.testing.assert_close(fused, network.items.weight + network.content_vectors())
        # items without content (the reserved rows here) get no content part
        assert torch.count_nonzero(network.content_vectors()[:2]) == 0


def test_attention_mask_blocks_future_and_padding_but_never_a_whole_row() -> None:
    padding = torch.tensor([[True, False, False]])
    mask = attention_mask(padding, num_heads=2)
    expected = torch.tensor([[False, True, True], [True, False, True], [True, False, False]])
    assert mask.shape == (2, 3, 3)
    assert torch.equal(mask[0], expected) and torch.equal(mask[1], expected)
    assert (~mask).any(dim=-1).all()


def test_trim_left_padding_keeps_every_real_column() -> None:
    batch = torch.tensor([[0, 0, 0, 5, 6], [0, 0, 7, 8, 9]])
    assert torch.equal(trim_left_padding(batch), batch[:, 2:])
    assert trim_left_padding(torch.zeros(2, 4, dtype=torch.long)).shape == (2, 1)


def test_left_pad_and_append_newest() -> None:
    lists = pa.array([[5, 6, 7], [8], []], pa.list_(pa.int64()))
    padded = left_pad(lists, 2)
    assert padded.tolist() == [[6, 7], [0, 8], [0, 0]]
    assert append_newest(padded, np.array([1, 2, 3])).tolist() == [[7, 1], [8, 2], [0, 3]]


def test_length_buckets_cover_every_row_once_and_group_lengths() -> None:
    lengths = np.array([1, 9, 2, 8, 3, 7, 4, 6])
    sampler = LengthBucketSampler(lengths, batch_size=2, seed=3)
    first, second = list(sampler), list(sampler)
    assert sorted(i for batch in first for i in batch) == list(range(8))
    assert all(abs(int(lengths[a]) - int(lengths[b])) <= 1 for a, b in first)
    assert first != second  # reshuffled per epoch


def test_config_rejects_unknown_keys_and_bad_heads() -> None:
    from recsys.errors import ConfigError

    with pytest.raises(ConfigError, match=r"model\.hidden_size"):
        small_config(hidden_size=3)
    with pytest.raises(ConfigError, match=r"model\.hidden_dim"):
        small_config(hidden_dim="abc")
    with pytest.raises(ConfigError, match=r"model\.molar\.temperture"):
        small_config(
            "molar",
            molar={"modalities": ["text"], "projection_hidden": 8, "align_weight": 0.5, "temperture": 1},
        )
    with pytest.raises(ConfigError, match="divisible"):
        small_config(num_heads=3)
    assert small_config("molar").molar == MolarConfig(("text",), 8, 0.5, 0.2)
