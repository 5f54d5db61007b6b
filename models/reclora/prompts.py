"""CTR prompts for the language model, built and tokenized once, up front.

Layout (target first, history most relevant first, so right truncation drops the least relevant items)::

    Candidate: Heat (Action, Crime). User: gender M, age 25, occupation engineer.
    Watched: Casino 4/5; Fargo 5/5; ...

Shapes: N prompts, T tokens (the longest prompt, at most ``max_length``), K history items.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from models.reclora.history import NO_EVENT
from recsys.errors import InputError
from recsys.schema import CATEGORIES, ITEM_IDX, TITLE, USER_IDX
from recsys.tables import read_arrow

UNKNOWN = "unknown"


@dataclass(frozen=True)
class ItemTexts:
    """Title and genre text per item_idx (``[N_items]`` lists; reserved and unknown rows are empty)."""

    titles: list[str]
    genres: list[str]

    @classmethod
    def from_content(cls, content: pa.Table, num_items: int, title_chars: int) -> ItemTexts:
        """From the features ``content`` output (``item_idx, title, categories``)."""
        titles, genres = [""] * num_items, [""] * num_items
        for idx, title, cats in zip(
            content[ITEM_IDX].to_pylist(),
            content[TITLE].to_pylist(),
            content[CATEGORIES].to_pylist(),
            strict=True,
        ):
            if 0 <= idx < num_items:
                titles[idx] = (title or "")[:title_chars]
                genres[idx] = ", ".join(cats or [])
        return cls(titles, genres)


@dataclass(frozen=True)
class UserProfiles:
    """One profile sentence per user_idx (``"gender M, age 25, occupation engineer"``)."""

    text: dict[int, str]

    def get(self, user_idx: int) -> str:
        return self.text.get(user_idx, UNKNOWN)

    @classmethod
    def from_features(cls, features: Path, attributes: tuple[str, ...]) -> UserProfiles:
        """Decode the ``users`` output's ``<attr>_idx`` columns through the ``vocab_<attr>`` outputs.

        Attributes the snapshot lacks are skipped (a dataset without a users table gives empty profiles).
        """
        if not (features / "users").is_dir():
            return cls({})
        users = read_arrow(features / "users")
        decoded: list[tuple[str, list[str]]] = []
        for attribute in attributes:
            column, vocab_dir = f"{attribute}_idx", features / f"vocab_{attribute}"
            if column not in users.column_names or not vocab_dir.is_dir():
                continue
            vocab = read_arrow(vocab_dir, columns=[attribute, column])
            lookup = dict(zip(vocab[column].to_pylist(), vocab[attribute].to_pylist(), strict=True))
            decoded.append((attribute, [str(lookup.get(i, UNKNOWN)) for i in users[column].to_pylist()]))
        text = {
            int(u): ", ".join(f"{name} {values[row]}" for name, values in decoded)
            for row, u in enumerate(users[USER_IDX].to_pylist())
        }
        return cls(text)


def build_prompts(
    users: np.ndarray,
    targets: np.ndarray,
    history_items: np.ndarray,
    history_ratings: np.ndarray,
    items: ItemTexts,
    profiles: UserProfiles,
) -> list[str]:
    """One prompt per sample.

    Args:
        users: ``[N]`` user_idx.
        targets: ``[N]`` target item_idx.
        history_items: ``[N, K]`` item_idx in prompt order, ``NO_EVENT`` padding.
        history_ratings: ``[N, K]`` ratings (NaN = unknown, shown without a rating).
        items: titles and genres.
        profiles: user profile sentences.

    Returns:
        ``N`` strings.
    """
    prompts = []
    for row in range(users.shape[0]):
        target = int(targets[row])
        if not 0 <= target < len(items.titles):
            raise InputError(
                f"target item_idx {target} is outside the item vocabulary ({len(items.titles)})."
            )
        watched = []
        for item, rating in zip(history_items[row], history_ratings[row], strict=True):
            if item == NO_EVENT:
                continue
            title = items.titles[int(item)] or UNKNOWN
            watched.append(title if np.isnan(rating) else f"{title} {rating:g}/5")
        genres = items.genres[target]
        candidate = f"{items.titles[target] or UNKNOWN}" + (f" ({genres})" if genres else "")
        prompts.append(
            f"Candidate: {candidate}. User: {profiles.get(int(users[row]))}. "
            f"Watched: {'; '.join(watched) if watched else 'nothing yet'}."
        )
    return prompts


@dataclass(frozen=True)
class TokenizedPrompts:
    """Right-padded token ids ``[N, T]`` and attention mask ``[N, T]`` (int64)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``index``, cut to the longest prompt among them (shorter batches cost less)."""
        mask = self.attention_mask[index]
        width = max(int(mask.sum(1).max().item()), 1)
        return self.input_ids[index, :width], mask[:, :width]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def tokenize(prompts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> TokenizedPrompts:
    """Tokenize every prompt in one batched call (fast tokenizers run it in Rust)."""
    encoded = tokenizer(
        prompts, padding="longest", truncation=True, max_length=max_length, return_tensors="pt"
    )
    return TokenizedPrompts(encoded["input_ids"].long(), encoded["attention_mask"].long())
