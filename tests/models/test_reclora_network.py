"""RecLoRA's LoRA bank and scorer: mixture algebra, PEFT semantics, zero-B identity, causal yes/no scoring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

from models.common.encoders import bundled_minilm_path
from models.reclora.config import BackboneConfig, LoRAConfig, MixerConfig
from models.reclora.lora import MixtureLoRALinear, inject_lora, layer_index, mixture_weights
from models.reclora.network import RecLoRAModel, answer_token_ids, load_backbone

ENCODER = BackboneConfig(None, "encoder", "mean", "yes", "no")
CAUSAL = BackboneConfig(None, "causal", "mean", "yes", "no")
PROMPTS = [
    "Candidate: Heat (Action, Crime). User: gender M, age 25. Watched: Casino 4/5; Fargo 5/5.",
    "Candidate: Babe (Children's, Comedy). User: gender F, age 31. Watched: nothing yet.",
    "Candidate: Fargo (Crime, Drama, Thriller). User: gender M, age 40. Watched: Heat 3/5.",
]


def save_tiny_bert(folder: Path, seed: int = 0) -> Path:
    """A 2-block, width-32 BERT with the bundled MiniLM tokenizer, saved like any local HF folder."""
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_minilm_path()), local_files_only=True)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A 2-block, width-32 LLaMA decoder with the MiniLM (WordPiece) tokenizer: any tokenizer with ``yes``
    and ``no`` tokens exercises the causal scoring path, and this one needs nothing downloaded."""
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_minilm_path()), local_files_only=True)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def randomize_lora(model: nn.Module, seed: int) -> None:
    """Give every LoRA B a non-zero value (B starts at zero, which would hide any mistake)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, MixtureLoRALinear):
            module.lora_B.data = torch.randn(module.lora_B.shape, generator=generator) * 0.1


def lora_cfg(
    num_meta: int, layers: tuple[int, ...] | None = None, targets: tuple[str, ...] = ("query", "value")
) -> LoRAConfig:
    return LoRAConfig(targets=targets, rank=4, alpha=8, dropout=0.0, num_meta=num_meta, layers=layers)


def test_one_hot_mixture_equals_the_single_meta_lora() -> None:
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    bank = MixtureLoRALinear(base, rank=3, alpha=6.0, dropout=0.0, num_meta=4)
    bank.lora_B.data = torch.randn_like(bank.lora_B)
    x = torch.randn(5, 7, 12)
    for k in range(4):
        single = MixtureLoRALinear(base, rank=3, alpha=6.0, dropout=0.0, num_meta=1)
        single.lora_A.data = bank.lora_A.data[k : k + 1].clone()
        single.lora_B.data = bank.lora_B.data[k : k + 1].clone()
        bank.weights = nn.functional.one_hot(torch.full((5,), k), 4).float()
        assert torch.allclose(bank(x), single(x), atol=1e-6)
        expected = base(x) + 2.0 * x @ bank.lora_A.data[k].t() @ bank.lora_B.data[k].t()
        assert torch.allclose(single(x), expected, atol=1e-5)


def test_batched_mixture_equals_materialised_per_sample_weights() -> None:
    torch.manual_seed(1)
    base = nn.Linear(8, 6)
    bank = MixtureLoRALinear(base, rank=2, alpha=4.0, dropout=0.0, num_meta=3)
    bank.lora_B.data = torch.randn_like(bank.lora_B)
    x = torch.randn(4, 5, 8)
    w = torch.softmax(torch.randn(4, 3), dim=-1)
    bank.weights = w
    out = bank(x)
    for b in range(4):
        delta = sum(w[b, k] * bank.lora_B.data[k] @ bank.lora_A.data[k] for k in range(3))
        assert isinstance(delta, torch.Tensor)
        effective = base.weight + 2.0 * delta
        assert torch.allclose(out[b], x[b] @ effective.t() + base.bias, atol=1e-5)


def test_k1_personalized_equals_shared_and_mixture_needs_weights() -> None:
    torch.manual_seed(2)
    layer = MixtureLoRALinear(nn.Linear(8, 6), rank=2, alpha=4.0, dropout=0.0, num_meta=1)
    layer.lora_B.data = torch.randn_like(layer.lora_B)
    x = torch.randn(3, 4, 8)
    shared = layer(x)
    layer.weights = torch.ones(3, 1)  # softmax over K = 1 is always 1
    assert torch.equal(layer(x), shared)
    bank = MixtureLoRALinear(nn.Linear(8, 6), rank=2, alpha=4.0, dropout=0.0, num_meta=2)
    with pytest.raises(RuntimeError, match="mixture weights"):
        bank(x)


def test_lora_injection_targets_and_layers(tmp_path: Path) -> None:
    backbone, _ = load_backbone(ENCODER, save_tiny_bert(tmp_path / "bert"))
    all_blocks = inject_lora(backbone, ("query", "value"), 2, 4.0, 0.0, 3)
    assert sorted(all_blocks) == [
        f"encoder.layer.{i}.attention.self.{n}" for i in range(2) for n in ("query", "value")
    ]
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{p}" for n in all_blocks for p in ("lora_A", "lora_B")}
    top, _ = load_backbone(ENCODER, tmp_path / "bert")
    assert {layer_index(n) for n in inject_lora(top, ("query",), 2, 4.0, 0.0, 3, layers=(1,))} == {1}
    with pytest.raises(ValueError, match=r"match no nn\.Linear"):
        inject_lora(top, ("nonexistent",), 2, 4.0, 0.0, 1)


def test_zero_b_leaves_the_real_minilm_unchanged_until_b_moves() -> None:
    """At initialisation (B = 0) the personalized MiniLM computes exactly the frozen backbone's states."""
    plain, tokenizer = load_backbone(ENCODER)
    adapted, _ = load_backbone(ENCODER)
    model = RecLoRAModel(adapted, "encoder", lora_cfg(4), 4, user_dim=6, mixer=MixerConfig(8, 1.0)).eval()
    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    users = torch.randn(len(PROMPTS), 6)
    with torch.no_grad():
        expected = plain(**batch).last_hidden_state
        with mixture_weights(model.layers, model.mixture(users)):
            got = model.backbone(**batch).last_hidden_state
        assert torch.equal(got, expected)
        randomize_lora(model, seed=3)
        with mixture_weights(model.layers, model.mixture(users)):
            moved = model.backbone(**batch).last_hidden_state
    assert not torch.allclose(moved, expected, atol=1e-4)


def test_causal_yes_no_logit_matches_the_language_model_head(tmp_path: Path) -> None:
    folder = save_tiny_llama(tmp_path / "llama")
    plain, tokenizer = load_backbone(CAUSAL, folder)
    adapted, _ = load_backbone(CAUSAL, folder)
    yes, no = answer_token_ids(tokenizer, CAUSAL)
    cfg = lora_cfg(1, targets=("q_proj", "v_proj"))
    model = RecLoRAModel(adapted, "causal", cfg, 1, answer_ids=(yes, no)).eval()
    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    last = batch["attention_mask"].sum(1) - 1
    with torch.no_grad():
        full = plain(**batch).logits[torch.arange(len(PROMPTS)), last]  # [B, vocab]
        got = model(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(got, full[:, yes] - full[:, no], atol=1e-5)
    assert yes != no and tokenizer.convert_ids_to_tokens([yes, no]) == ["yes", "no"]


def test_encoder_gradients_reach_only_adapters_head_and_mixer(tmp_path: Path) -> None:
    backbone = AutoModel.from_pretrained(str(save_tiny_bert(tmp_path / "bert")), local_files_only=True)
    model = RecLoRAModel(backbone, "encoder", lora_cfg(3), 3, user_dim=5, mixer=MixerConfig(8, 0.5))
    ids = torch.randint(1000, 2000, (4, 9))
    loss = model(ids, torch.ones_like(ids), torch.randn(4, 5)).sum()
    loss.backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("mixer.") for n in with_grad) and "head.weight" in with_grad
    assert all("lora_" in n or n.startswith(("mixer.", "head.")) for n in with_grad)


def test_cached_frozen_prefix_gives_the_full_forward(tmp_path: Path) -> None:
    """LoRA on the top block only: the lower block's output is cached once and the logits do not change."""
    from models.reclora.fit import LMData, score_lm, with_prefix
    from models.reclora.prompts import tokenize

    folder = save_tiny_bert(tmp_path / "bert")
    backbone, tokenizer = load_backbone(ENCODER, folder)
    model = RecLoRAModel(
        backbone, "encoder", lora_cfg(3, layers=(1,)), 3, user_dim=4, mixer=MixerConfig(8, 1.0)
    )
    randomize_lora(model, seed=4)
    assert model.prefix_blocks == 1
    data = LMData(tokenize(PROMPTS, tokenizer, 64), torch.zeros(3), torch.randn(3, 4))
    cached = with_prefix(model, data, batch_size=2)
    assert cached.prefix is not None and cached.prefix.shape[:2] == data.prompts.input_ids.shape
    full, fast = score_lm(model, data, batch_size=2), score_lm(model, cached, batch_size=2)
    assert full.tolist() == pytest.approx(fast.tolist(), abs=1e-6)
    every, _ = load_backbone(ENCODER, folder)
    assert (
        RecLoRAModel(every, "encoder", lora_cfg(1), 1).prefix_blocks == 0
    )  # adapters in block 0: nothing to cache
    # Training through the cached prefix still reaches the adapters and leaves the blocks restored.
    input_ids, mask, users, prefix = cached.batch(torch.tensor([0, 2]))
    model(input_ids, mask, users, prefix).sum().backward()
    assert all(layer.lora_A.grad is not None for layer in model.layers.values())
    restored = model.backbone.get_submodule("encoder.layer.0")
    assert isinstance(restored, type(every.get_submodule("encoder.layer.0")))
