"""Samples of one split and the prompts of their LM side, assembled once per (seed, retriever setting).

Shapes: N samples, K short-history items, L long-history items, D_u user-vector width.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from models.reclora.config import PromptConfig
from models.reclora.conventional import Conventional, long_history_items, user_vectors
from models.reclora.fit import LMData
from models.reclora.history import NO_EVENT, EventLog, recent_events, retrieve_events
from models.reclora.prompts import ItemTexts, TokenizedPrompts, UserProfiles, build_prompts, tokenize
from recsys.schema import ITEM_IDX, LABEL, SPLIT, TIMESTAMP, USER_IDX

HISTORY_TABLE = "t_recent_items"
USER_TABLE = "t_user"


@dataclass(frozen=True)
class SampleSet:
    """Rows of one split (the long-history ctr columns) and their ids as arrays ``[N]``."""

    rows: pa.Table
    users: np.ndarray
    items: np.ndarray
    timestamps: np.ndarray
    labels: np.ndarray

    @classmethod
    def select(cls, table: pa.Table, split: str, index: np.ndarray | None = None) -> SampleSet:
        """Rows of ``split`` sorted by (timestamp, user, item) for a stable order, then ``index`` of them."""
        rows = table.filter(pc.equal(table[SPLIT], split)).sort_by(
            [(TIMESTAMP, "ascending"), (USER_IDX, "ascending"), (ITEM_IDX, "ascending")]
        )
        if index is not None:
            rows = rows.take(pa.array(index))
        return cls(
            rows,
            np.asarray(rows[USER_IDX].to_numpy(), dtype=np.int64),
            np.asarray(rows[ITEM_IDX].to_numpy(), dtype=np.int64),
            np.asarray(rows[TIMESTAMP].to_numpy(), dtype=np.int64),
            np.asarray(rows[LABEL].to_numpy(), dtype=np.float32),
        )

    def __len__(self) -> int:
        return int(self.users.shape[0])


@dataclass(frozen=True)
class PromptBuilder:
    """Short history (retrieved or recent) -> prompt text -> tokens, for a batch of samples at once."""

    items: ItemTexts
    profiles: UserProfiles
    vectors: np.ndarray
    prompt: PromptConfig
    pool: int | None
    tokenizer: PreTrainedTokenizerBase

    def short_history(
        self, log: EventLog, start: np.ndarray, end: np.ndarray, targets: np.ndarray, retriever: bool
    ) -> np.ndarray:
        """``[N, K]`` event indices in prompt order (most relevant first), ``NO_EVENT`` padding."""
        count = self.prompt.short_history
        if retriever:
            return retrieve_events(log, start, end, targets, self.vectors, count, self.pool)
        return recent_events(start, end, count)

    def build(
        self,
        log: EventLog,
        users: np.ndarray,
        targets: np.ndarray,
        start: np.ndarray,
        end: np.ndarray,
        retriever: bool,
    ) -> TokenizedPrompts:
        events = self.short_history(log, start, end, targets, retriever)
        present = events != NO_EVENT
        safe = np.maximum(events, 0)
        items = np.where(present, log.items[safe], NO_EVENT)
        ratings = np.where(present, log.ratings[safe], np.nan)
        texts = build_prompts(users, targets, items, ratings, self.items, self.profiles)
        return tokenize(texts, self.tokenizer, self.prompt.max_length)


def lm_data(
    samples: SampleSet,
    log: EventLog,
    builder: PromptBuilder,
    conventional: Conventional,
    long_history: int,
    retriever: bool,
) -> LMData:
    """Prompts (LM side) and user vectors from the frozen conventional model (mixer side) of ``samples``."""
    start, end = log.earlier(samples.users, samples.timestamps)
    prompts = builder.build(log, samples.users, samples.items, start, end, retriever)
    long_items = long_history_items(log, samples.users, samples.timestamps, long_history)
    vectors = user_vectors(
        conventional.table(USER_TABLE), conventional.table(HISTORY_TABLE), samples.users, long_items
    )
    return LMData(prompts, torch.from_numpy(samples.labels), torch.from_numpy(vectors))
