"""Saving and loading RecLoRA adapters.

Shared LoRA (K = 1) -> a PEFT adapter folder (``peft.PeftModel.from_pretrained(backbone, folder)``):

- ``adapter_config.json``: ``peft.LoraConfig(r, lora_alpha, target_modules, lora_dropout, bias="none")``;
- ``adapter_model.safetensors``: ``base_model.model.<module path>.lora_A.weight [r, d_in]`` and
  ``...lora_B.weight [d_out, r]`` for every adapted Linear (PEFT's key layout, adapter name stripped);
- ``head.safetensors``: the CTR head (``head.weight [1, H]``, ``head.bias [1]``; encoder backbones only),
  which is not part of the backbone and so not of the PEFT adapter.

Personalized LoRA (K > 1) has no PEFT equivalent (PEFT has no per-sample mixtures), so the bank is one
``adapters.safetensors`` with the keys of :meth:`RecLoRAModel.trainable_state_dict`:

- ``backbone.<module path>.lora_A`` ``[K, r, d_in]`` and ``backbone.<module path>.lora_B`` ``[K, d_out, r]``
  (meta-LoRA k is ``lora_A[k]`` / ``lora_B[k]``, the PEFT layouts stacked on a leading K axis);
- ``mixer.net.0.*`` (LayerNorm over u), ``mixer.net.1.*`` / ``mixer.net.3.*`` (the two Linear layers);
- ``head.weight`` / ``head.bias``;

plus ``reclora_adapter.json`` with ``rank``, ``alpha``, ``dropout``, ``targets``, ``num_meta``,
``temperature``, ``user_dim``, ``kind`` and ``pooling``. The shared model is also written in this layout
(K = 1), so one loader serves both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig
from safetensors.torch import load_file, save_file

from models.reclora.config import LoRAConfig
from models.reclora.network import RecLoRAModel

BANK_FILE = "adapters.safetensors"
BANK_CONFIG = "reclora_adapter.json"
HEAD_FILE = "head.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"


def save_peft_adapter(
    model: RecLoRAModel, lora: LoRAConfig, folder: Path, base_path: str | None = None
) -> None:
    """Write the shared LoRA (K = 1) as a PEFT adapter folder plus ``head.safetensors``.

    Raises:
        ValueError: the model is personalized (K > 1).
    """
    if model.num_meta != 1:
        raise ValueError(f"only a shared LoRA (num_meta=1) has a PEFT form; this one has K={model.num_meta}.")
    folder.mkdir(parents=True, exist_ok=True)
    LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        target_modules=list(lora.targets),
        lora_dropout=lora.dropout,
        bias="none",
        layers_to_transform=None if lora.layers is None else list(lora.layers),
        base_model_name_or_path=base_path,
    ).save_pretrained(str(folder))
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in model.layers.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = layer.lora_A.detach()[0].contiguous().clone()
        tensors[f"base_model.model.{name}.lora_B.weight"] = layer.lora_B.detach()[0].contiguous().clone()
    save_file(tensors, str(folder / PEFT_WEIGHTS))
    if model.head is not None:
        head = {f"head.{k}": v.detach().contiguous().clone() for k, v in model.head.state_dict().items()}
        save_file(head, str(folder / HEAD_FILE))


def save_bank(model: RecLoRAModel, lora: LoRAConfig, folder: Path, settings: dict[str, Any]) -> None:
    """Write ``adapters.safetensors`` + ``reclora_adapter.json`` (layout in the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(model.trainable_state_dict(), str(folder / BANK_FILE))
    meta = {
        "rank": lora.rank,
        "alpha": lora.alpha,
        "dropout": lora.dropout,
        "targets": list(lora.targets),
        "layers": None if lora.layers is None else list(lora.layers),
        "num_meta": model.num_meta,
        **settings,
    }
    (folder / BANK_CONFIG).write_text(json.dumps(meta, indent=2, sort_keys=True))


def load_bank(model: RecLoRAModel, folder: Path) -> None:
    """Load ``adapters.safetensors`` into a model built with the same settings (every key must match)."""
    state = load_file(str(folder / BANK_FILE))
    expected = set(model.trainable_state_dict())
    if set(state) != expected:
        raise ValueError(
            f"{folder / BANK_FILE}: keys differ from the model's trainable parameters: "
            f"missing {sorted(expected - set(state))[:3]}, unexpected {sorted(set(state) - expected)[:3]}."
        )
    model.load_state_dict(state, strict=False)
