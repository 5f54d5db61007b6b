"""Personalized LoRA: a bank of K meta-LoRAs on frozen Linear layers, mixed per sample.

Shapes: B batch, L tokens, K meta-LoRAs, r rank, d_in / d_out the wrapped Linear's widths.

For a frozen ``W`` and per-sample mixture weights ``w [B, K]`` (rows sum to 1) the layer computes

    y = W x + (alpha / r) * sum_k w_k B_k A_k dropout(x)

batched as two matmuls over the concatenated bank: ``h = dropout(x) @ A_cat^T  [B, L, K*r]`` (A_cat is
``[K*r, d_in]``), ``h *= repeat(w, r)``, ``y += (alpha / r) * h @ B_cat^T`` (B_cat is ``[d_out, K*r]``). No
per-user weight matrix is ever built, so the extra cost over one LoRA of rank r is that of one LoRA of rank
K*r. With K = 1 and no weights this is exactly PEFT's LoRA (``lora_B(lora_A(dropout(x))) * scaling``, A
Kaiming-uniform, B zeros), which is how the shared LoRA is expressed and exported.

The mixture weights are set on the wrapped backbone by :func:`mixture_weights` for the duration of one
forward pass (every wrapped layer of that pass uses the same ``w``), so the backbone's own forward signature
is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class MixtureLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a bank of ``num_meta`` LoRAs mixed by per-sample weights.

    Args:
        base: the Linear to adapt (its weights are frozen here).
        rank: r of every meta-LoRA.
        alpha: scaling numerator (update scaled by ``alpha / rank``).
        dropout: dropout probability on the LoRA input.
        num_meta: K; 1 = a plain (shared) LoRA.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float, num_meta: int) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.num_meta = num_meta
        self.scaling = alpha / rank
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # A_k stacked: [K, r, d_in]; B_k stacked: [K, d_out, r] (PEFT's lora_A / lora_B weight layouts).
        self.lora_A = nn.Parameter(torch.empty(num_meta, rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(num_meta, base.out_features, rank))
        self.weights: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PEFT's init for each meta-LoRA: A Kaiming-uniform (a = sqrt(5)), B zeros (update starts at 0)."""
        for k in range(self.num_meta):
            nn.init.kaiming_uniform_(self.lora_A.data[k], a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d_in] -> [..., d_out]``; uses ``self.weights [B, K]`` when K > 1 (leading dim = B)."""
        out: torch.Tensor = self.base(x)
        a_cat = self.lora_A.reshape(self.num_meta * self.rank, -1)  # [K*r, d_in]
        hidden = self.dropout(x) @ a_cat.t()  # [B, L, K*r]
        if self.num_meta > 1:
            if self.weights is None:
                raise RuntimeError(
                    "MixtureLoRALinear with K > 1 needs mixture weights: use mixture_weights()."
                )
            per_rank = self.weights.repeat_interleave(self.rank, dim=-1)  # [B, K*r]
            shape = (per_rank.shape[0],) + (1,) * (hidden.dim() - 2) + (per_rank.shape[1],)
            hidden = hidden * per_rank.reshape(shape)
        b_cat = self.lora_B.permute(1, 0, 2).reshape(self.base.out_features, -1)  # [d_out, K*r]
        update: torch.Tensor = (hidden @ b_cat.t()) * self.scaling
        return out + update


def layer_index(name: str) -> int | None:
    """The transformer block a module path belongs to: its first all-digit component (``encoder.layer.3.
    attention.self.query`` -> 3, ``model.layers.1.self_attn.q_proj`` -> 1); None outside the blocks."""
    for part in name.split("."):
        if part.isdigit():
            return int(part)
    return None


def inject_lora(
    backbone: nn.Module,
    targets: tuple[str, ...],
    rank: int,
    alpha: float,
    dropout: float,
    num_meta: int,
    layers: tuple[int, ...] | None = None,
) -> dict[str, MixtureLoRALinear]:
    """Replace every ``nn.Linear`` whose name ends with one of ``targets`` by a :class:`MixtureLoRALinear`.

    Matching is PEFT's ``target_modules`` rule for plain names (the last path component equals a target),
    restricted to the blocks ``layers`` when given (PEFT's ``layers_to_transform``). Every parameter of
    ``backbone`` is frozen first; only the LoRA banks are trainable afterwards. Adapting only the top
    blocks also shortens the backward pass: autograd stops below the lowest adapted block.

    Returns:
        ``{module path: wrapped layer}`` in the backbone's module order.

    Raises:
        ValueError: no Linear matched (names the targets and a few Linear layers that exist).
    """
    for p in backbone.parameters():
        p.requires_grad_(False)
    matches = [
        (name, module)
        for name, module in backbone.named_modules()
        if isinstance(module, nn.Linear)
        and name.split(".")[-1] in targets
        and (layers is None or layer_index(name) in layers)
    ]
    if not matches:
        linears = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)][:6]
        raise ValueError(
            f"model.lora.targets={list(targets)} (layers {layers}) match no nn.Linear; "
            f"Linear layers: {linears}."
        )
    wrapped: dict[str, MixtureLoRALinear] = {}
    for name, module in matches:
        assert isinstance(module, nn.Linear)
        parent_name, _, child = name.rpartition(".")
        parent = backbone.get_submodule(parent_name) if parent_name else backbone
        layer = MixtureLoRALinear(module, rank, alpha, dropout, num_meta)
        setattr(parent, child, layer)
        wrapped[name] = layer
    return wrapped


@contextmanager
def mixture_weights(layers: dict[str, MixtureLoRALinear], weights: torch.Tensor | None) -> Iterator[None]:
    """Set the mixture weights ``[B, K]`` on every wrapped layer for one forward pass, then clear them."""
    for layer in layers.values():
        layer.weights = weights
    try:
        yield
    finally:
        for layer in layers.values():
            layer.weights = None


class Mixer(nn.Module):
    """Soft routing of the paper: ``w = softmax(MLP(u) / tau)``, ``u [B, D_u] -> w [B, K]``.

    A LayerNorm first puts the frozen conventional model's vector (embedding rows of arbitrary scale) on a
    fixed scale, so one learning rate suits every conventional model.
    """

    def __init__(self, in_features: int, hidden: int, num_meta: int, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.net = nn.Sequential(
            nn.LayerNorm(in_features), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_meta)
        )

    def forward(self, user_vectors: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(user_vectors)
        return torch.softmax(logits / self.temperature, dim=-1)
