"""Plain ``nn.Module`` networks: SASRec (Kang & McAuley 2018) and the Molar-style two-tower sequence model.

No Lightning, no I/O and no loss here (STYLE 2.2), so the pyfunc, the benchmark's plain loop and the tests
use the same networks.

Shapes: B sequences, L positions (left-padded, newest item last), D model width, N item indices (reserved
indices 0 = padding and 1 = OOV included), C content width, H attention heads.

Both networks expose the retriever contract: ``states(items [B, L]) -> SequenceStates`` (the next-item query
at every position), ``user_vectors(items [B, L]) -> [B, D]`` (the query after the newest item) and
``item_vectors() -> [N, D]``; a next-item score is ``user_vector @ item_vectors().T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from models.sequential.config import SequentialConfig
from recsys.schema import PADDING_INDEX


def attention_mask(padding: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Boolean attention mask ``[B * H, L, L]`` (True = blocked) for left-padded sequences.

    Position t attends to positions <= t (causal) that are real items (key padding). A padding position
    attends to itself only: its output is discarded, but a row with every key blocked would give NaN.
    Real positions never see padding, so adding or removing left padding does not change their outputs.

    Args:
        padding: ``[B, L]`` bool, True where the position is padding.
        num_heads: H; the mask is repeated per head in the layout ``nn.MultiheadAttention`` expects.
    """
    length = padding.shape[1]
    future = torch.ones(length, length, dtype=torch.bool, device=padding.device).triu(1)
    eye = torch.eye(length, dtype=torch.bool, device=padding.device)
    blocked = future.unsqueeze(0) | (padding.unsqueeze(1) & ~eye.unsqueeze(0))
    return blocked.repeat_interleave(num_heads, dim=0)


def additive_attention_mask(padding: torch.Tensor, num_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """:func:`attention_mask` as the additive float mask (0 / -inf) attention uses internally; built once
    per batch instead of being converted from bool in every block."""
    blocked = attention_mask(padding, num_heads)
    return torch.zeros(blocked.shape, dtype=dtype, device=padding.device).masked_fill_(blocked, float("-inf"))


def trim_left_padding(sequences: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns of ``[B, L]`` that are padding in every row.

    The networks' outputs at real positions do not depend on left padding (see ``network.attention_mask``),
    so this only saves work: attention costs O(L^2) per sequence.
    """
    real = (sequences != PADDING_INDEX).any(dim=0)
    if not bool(real.any()):
        return sequences[:, -1:]
    first = int(torch.argmax(real.to(torch.int8)))
    return sequences[:, first:]


class SequenceEncoder(nn.Module):
    """SASRec's self-attention stack: learned positions, causal pre-LN blocks, a final layer norm.

    Positions are counted from the newest item (newest = 0): for a fixed L this is SASRec's absolute
    position embedding (its padding is on the left too), and it keeps an item's position independent of how
    much padding precedes the sequence.
    """

    def __init__(self, max_len: int, dim: int, num_blocks: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.max_len = max_len
        self.num_heads = num_heads
        self.positions = nn.Embedding(max_len, dim)
        self.input_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(
                d_model=dim,
                nhead=num_heads,
                dim_feedforward=dim,
                dropout=dropout,
                activation="relu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(num_blocks)
        )
        self.final_norm = nn.LayerNorm(dim, eps=1e-8)
        nn.init.xavier_normal_(self.positions.weight)

    def forward(self, inputs: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        """``inputs [B, L, D]`` item representations, ``padding [B, L]`` -> hidden states ``[B, L, D]``
        (zeros at padding positions)."""
        length = inputs.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the model's max_len {self.max_len}")
        positions = torch.arange(length - 1, -1, -1, device=inputs.device)
        keep = (~padding).unsqueeze(-1).to(inputs.dtype)
        hidden = self.input_dropout(inputs + self.positions(positions).unsqueeze(0)) * keep
        mask = additive_attention_mask(padding, self.num_heads, hidden.dtype)
        for block in self.blocks:
            hidden = block(hidden, src_mask=mask) * keep
        out: torch.Tensor = self.final_norm(hidden) * keep
        return out


@dataclass
class SequenceStates:
    """Per-position next-item queries ``hidden [B, L, D]`` in the item-vector space; Molar adds the
    content-based and ID-based user models' states ``[B, L, D]`` for the alignment loss."""

    hidden: torch.Tensor
    content: torch.Tensor | None = None
    ids: torch.Tensor | None = None


def _item_embedding(num_items: int, dim: int) -> nn.Embedding:
    embedding = nn.Embedding(num_items, dim, padding_idx=PADDING_INDEX)
    nn.init.xavier_normal_(embedding.weight)
    with torch.no_grad():
        embedding.weight[PADDING_INDEX].zero_()
    return embedding


class SASRec(nn.Module):
    """ID-only SASRec: item embedding (scaled by sqrt(D), padding row 0) -> ``SequenceEncoder``; the item
    embedding table is shared between input and output (scores = hidden @ E^T), as in the paper."""

    def __init__(
        self, num_items: int, max_len: int, dim: int, num_blocks: int, num_heads: int, dropout: float
    ) -> None:
        super().__init__()
        self.items = _item_embedding(num_items, dim)
        self.scale = math.sqrt(dim)
        self.encoder = SequenceEncoder(max_len, dim, num_blocks, num_heads, dropout)

    def states(self, items: torch.Tensor) -> SequenceStates:
        padding = items == PADDING_INDEX
        return SequenceStates(self.encoder(self.items(items) * self.scale, padding))

    def user_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.states(items).hidden[:, -1]

    def item_vectors(self) -> torch.Tensor:
        return self.items.weight


class MolarNet(nn.Module):
    """Molar-style model: a content-based and an ID-based user model over one fused item space.

    * Content item vector ``c_i = P(x_i)``: the frozen encoder vector ``x_i [C]`` (text, image, ...
      concatenated) through a 2-layer MLP ``P: C -> D``; zero for items without content.
    * ID item vector ``e_i``: a learned embedding (padding row 0), as in SASRec.
    * Fused item vector ``v_i = e_i + c_i``: the one item space that is indexed (FAISS) and scored.
    * Content user model: ``SequenceEncoder`` over ``c`` of the history -> ``u_c [B, L, D]``;
      ID user model: another ``SequenceEncoder`` over ``sqrt(D) * e`` -> ``u_id [B, L, D]``.
    * Fused user vector ``u = u_c + u_id``; next-item score ``u . v_i``. Training adds the post-alignment
      InfoNCE between ``u_c`` and ``u_id`` of the same user (see ``losses.info_nce``).

    Sum fusion keeps one D-dimensional space for users and items, so inference needs one user vector and one
    FAISS index, and ``u . v`` decomposes into ID, content and cross terms the alignment loss ties together.
    """

    def __init__(
        self,
        content: torch.Tensor,
        has_content: torch.Tensor,
        max_len: int,
        dim: int,
        num_blocks: int,
        num_heads: int,
        dropout: float,
        projection_hidden: int,
    ) -> None:
        super().__init__()
        num_items, content_dim = content.shape
        self.register_buffer("content", content.float(), persistent=True)
        self.register_buffer("has_content", has_content.float().unsqueeze(-1), persistent=True)
        self.items = _item_embedding(num_items, dim)
        self.scale = math.sqrt(dim)
        self.projection = nn.Sequential(
            nn.Linear(content_dim, projection_hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(projection_hidden, dim),
        )
        self.content_encoder = SequenceEncoder(max_len, dim, num_blocks, num_heads, dropout)
        self.id_encoder = SequenceEncoder(max_len, dim, num_blocks, num_heads, dropout)

    def content_vectors(self) -> torch.Tensor:
        """``[N, D]`` projected content vectors (zero rows for items without content)."""
        content, has_content = self.get_buffer("content"), self.get_buffer("has_content")
        projected: torch.Tensor = self.projection(content) * has_content
        return projected

    def states(self, items: torch.Tensor) -> SequenceStates:
        padding = items == PADDING_INDEX
        content = self.content_vectors()[items]
        user_content = self.content_encoder(content, padding)
        user_ids = self.id_encoder(self.items(items) * self.scale, padding)
        return SequenceStates(user_content + user_ids, user_content, user_ids)

    def user_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.states(items).hidden[:, -1]

    def item_vectors(self) -> torch.Tensor:
        return self.items.weight + self.content_vectors()


def build_network(
    cfg: SequentialConfig, num_items: int, content: tuple[np.ndarray, np.ndarray] | None = None
) -> SASRec | MolarNet:
    """The network ``cfg.architecture`` names, sized by the vocabulary (``num_items`` from the manifest).

    Args:
        cfg: model settings.
        num_items: N, reserved indices included.
        content: Molar only: ``(vectors [N, C] float32, has_content [N] bool)``.

    Raises:
        ValueError: Molar without content, or content with another number of rows than N.
    """
    if cfg.architecture == "sasrec":
        return SASRec(num_items, cfg.max_len, cfg.hidden_dim, cfg.num_blocks, cfg.num_heads, cfg.dropout)
    if content is None or cfg.molar is None:
        raise ValueError("architecture=molar needs content vectors and a molar config")
    vectors, has_content = content
    if vectors.shape[0] != num_items:
        raise ValueError(f"content vectors have {vectors.shape[0]} rows, the item vocabulary {num_items}")
    return MolarNet(
        torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)),
        torch.from_numpy(np.asarray(has_content, dtype=bool)),
        cfg.max_len,
        cfg.hidden_dim,
        cfg.num_blocks,
        cfg.num_heads,
        cfg.dropout,
        cfg.molar.projection_hidden,
    )


def shortest_first(histories: np.ndarray) -> np.ndarray:
    """``[U]`` row order of ``histories [U, L]`` by ascending history length (stable).

    Batches of similar lengths lose their common left padding (:func:`trim_left_padding`): on a long-tailed
    log most histories are short, and a batch in user order almost always holds one long history, so every
    row would otherwise be encoded at nearly ``L`` positions.
    """
    lengths = (histories != PADDING_INDEX).sum(axis=1)
    order: np.ndarray = np.argsort(lengths, kind="stable")
    return order


def encode_users(network: SASRec | MolarNet, histories: np.ndarray, batch_size: int) -> np.ndarray:
    """``[U, D]`` float32 user vectors of ``histories [U, L]`` (eval mode, no gradients, batched shortest
    histories first; row r of the result belongs to ``histories[r]``)."""
    was_training = network.training
    network.eval()
    dim = int(network.item_vectors().shape[1])
    out = np.zeros((histories.shape[0], dim), dtype=np.float32)
    order = shortest_first(histories)
    with torch.no_grad():
        for start in range(0, histories.shape[0], batch_size):
            rows = order[start : start + batch_size]
            batch = trim_left_padding(torch.from_numpy(histories[rows]))
            out[rows] = network.user_vectors(batch).float().numpy()
    network.train(was_training)
    return out
