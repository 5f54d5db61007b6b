"""Adapter files: the shared LoRA as a PEFT adapter (PeftModel.from_pretrained gives identical logits), the
meta-LoRA bank as safetensors (reload gives identical logits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from models.reclora.adapters import BANK_CONFIG, HEAD_FILE, load_bank, save_bank, save_peft_adapter
from models.reclora.config import LoRAConfig, MixerConfig
from models.reclora.network import RecLoRAModel, answer_token_ids, load_backbone
from tests.models.test_reclora_network import (
    CAUSAL,
    ENCODER,
    PROMPTS,
    randomize_lora,
    save_tiny_bert,
    save_tiny_llama,
)


def _mean_pool(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).float()
    return (states * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("layers", [None, (1,)])
def test_shared_lora_peft_roundtrip_gives_identical_logits(
    tmp_path: Path, layers: tuple[int, ...] | None
) -> None:
    folder = save_tiny_bert(tmp_path / "bert")
    lora = LoRAConfig(("query", "value"), rank=4, alpha=8, dropout=0.1, num_meta=1, layers=layers)
    backbone, tokenizer = load_backbone(ENCODER, folder)
    model = RecLoRAModel(backbone, "encoder", lora, 1).eval()
    randomize_lora(model, seed=5)
    save_peft_adapter(model, lora, tmp_path / "peft", str(folder))
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (
        config["r"] == 4 and config["lora_alpha"] == 8 and set(config["target_modules"]) == {"query", "value"}
    )

    fresh, _ = load_backbone(ENCODER, folder)
    peft_model = PeftModel.from_pretrained(fresh, str(tmp_path / "peft")).eval()
    head = load_file(str(tmp_path / "peft" / HEAD_FILE))
    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"])
        pooled = _mean_pool(peft_model(**batch).last_hidden_state, batch["attention_mask"])
        theirs = pooled @ head["head.weight"].t() + head["head.bias"]
        plain, _ = load_backbone(ENCODER, folder)
        bare = _mean_pool(plain(**batch).last_hidden_state, batch["attention_mask"])
    assert torch.allclose(ours, theirs.squeeze(-1), atol=1e-6)
    assert not torch.allclose(pooled, bare, atol=1e-4)  # the adapter really changes the backbone


def test_causal_shared_lora_peft_roundtrip(tmp_path: Path) -> None:
    folder = save_tiny_llama(tmp_path / "llama")
    lora = LoRAConfig(("q_proj", "v_proj"), rank=4, alpha=8, dropout=0.0, num_meta=1)
    backbone, tokenizer = load_backbone(CAUSAL, folder)
    yes, no = answer_token_ids(tokenizer, CAUSAL)
    model = RecLoRAModel(backbone, "causal", lora, 1, answer_ids=(yes, no)).eval()
    randomize_lora(model, seed=6)
    save_peft_adapter(model, lora, tmp_path / "peft", str(folder))
    assert not (tmp_path / "peft" / HEAD_FILE).exists()  # causal scoring has no extra head
    fresh, _ = load_backbone(CAUSAL, folder)
    peft_model = PeftModel.from_pretrained(fresh, str(tmp_path / "peft")).eval()
    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    last = batch["attention_mask"].sum(1) - 1
    with torch.no_grad():
        ours = model(batch["input_ids"], batch["attention_mask"])
        logits = peft_model(**batch).logits[torch.arange(len(PROMPTS)), last]
    assert torch.allclose(ours, logits[:, yes] - logits[:, no], atol=1e-5)


def test_personalized_bank_roundtrip_and_k_guard(tmp_path: Path) -> None:
    folder = save_tiny_bert(tmp_path / "bert")
    lora = LoRAConfig(("query", "value"), rank=2, alpha=4, dropout=0.0, num_meta=3)
    mixer = MixerConfig(hidden=8, temperature=0.5)
    backbone, tokenizer = load_backbone(ENCODER, folder)
    model = RecLoRAModel(backbone, "encoder", lora, 3, user_dim=6, mixer=mixer).eval()
    randomize_lora(model, seed=7)
    save_bank(model, lora, tmp_path / "bank", {"kind": "encoder"})
    with pytest.raises(ValueError, match="num_meta=1"):
        save_peft_adapter(model, lora, tmp_path / "peft")
    meta = json.loads((tmp_path / "bank" / BANK_CONFIG).read_text())
    assert meta["num_meta"] == 3 and meta["rank"] == 2
    tensors = load_file(str(tmp_path / "bank" / "adapters.safetensors"))
    assert tensors["backbone.encoder.layer.0.attention.self.query.lora_A"].shape == (3, 2, 32)
    assert tensors["backbone.encoder.layer.0.attention.self.query.lora_B"].shape == (3, 32, 2)
    torch.manual_seed(99)  # a different initialisation, overwritten by the load
    other, _ = load_backbone(ENCODER, folder)
    reloaded = RecLoRAModel(other, "encoder", lora, 3, user_dim=6, mixer=mixer).eval()
    load_bank(reloaded, tmp_path / "bank")
    batch = tokenizer(PROMPTS, padding=True, return_tensors="pt")
    users = torch.randn(len(PROMPTS), 6)
    with torch.no_grad():
        assert torch.equal(
            model(batch["input_ids"], batch["attention_mask"], users),
            reloaded(batch["input_ids"], batch["attention_mask"], users),
        )
