"""What every served recommender shares: reading a request's histories, and the popularity fallback.

A served model answers rows it cannot personalise (an empty history, or only item ids the model has never
seen) with the snapshot's most popular items and marks them in a ``fallback`` column, so a client can tell
"popular for everyone" from "picked for you"; it never pads a list with arbitrary items scored 0. A request
the model cannot read at all is a client error (:func:`recsys.tracking.models.bad_request`, HTTP 400) whose
message shows the expected shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from recsys.schema import FIRST_INDEX
from recsys.tracking.models import bad_request

HISTORY = "history"
ITEM_IDS = "item_ids"
SCORES = "scores"
FALLBACK = "fallback"
POPULARITY_ARTIFACT = "popularity"
REQUEST_EXAMPLE = f"{{'dataframe_records': [{{'{HISTORY}': ['50', '172']}}]}}"
USER_ID = "user_id"
# Request limits. A served worker holds a whole request in memory and scores every row, so a request beyond
# them is answered 400 at once instead of exhausting the worker (the models read only the most recent
# items of a history anyway: SASRec's max_len is 50). Real ids are short; a 256+ character one is a bug.
MAX_ROWS = 10_000
MAX_HISTORY_ITEMS = 1_000
MAX_ID_CHARS = 256


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


def _id(value: Any, column: str) -> str:
    if isinstance(value, (list, dict, tuple, bytes)):
        raise bad_request(f"column {column!r}: ids must be strings or numbers, got {_short(value)}")
    text = str(value)
    if len(text) > MAX_ID_CHARS:
        raise bad_request(
            f"column {column!r}: an id of {len(text)} characters (at most {MAX_ID_CHARS}): {_short(text)}"
        )
    return text


def _history(values: Any) -> list[str]:
    if values is None or (isinstance(values, float) and np.isnan(values)):
        return []
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__iter__"):
        raise bad_request(
            f"column {HISTORY!r}: each row must be a list of raw item ids, got {_short(values)}; "
            f"e.g. {REQUEST_EXAMPLE}."
        )
    items = list(values)
    if len(items) > MAX_HISTORY_ITEMS:
        raise bad_request(
            f"column {HISTORY!r}: a history of {len(items)} items (at most {MAX_HISTORY_ITEMS}); send the "
            f"most recent {MAX_HISTORY_ITEMS}, oldest first."
        )
    return [_id(v, HISTORY) for v in items]


def request_histories(model_input: Any) -> list[list[str]]:
    """The ``history`` column as lists of raw item ids (``str``), oldest first; a missing column, a row
    that is not a list, or a request beyond the limits (rows, history length, id length, also of an
    optional ``user_id``) is a bad request."""
    if not isinstance(model_input, pd.DataFrame) or HISTORY not in model_input.columns:
        raise bad_request(
            f"the request needs a column {HISTORY!r} (a list of raw item ids per row, oldest first); "
            f"e.g. {REQUEST_EXAMPLE}."
        )
    if len(model_input) > MAX_ROWS:
        raise bad_request(f"{len(model_input)} rows in one request (at most {MAX_ROWS}); split it.")
    request_user_ids(model_input)  # checked even by models that do not read it: a bad id is a client bug
    return [_history(v) for v in model_input[HISTORY]]


def request_user_ids(model_input: pd.DataFrame) -> list[str | None]:
    """The optional ``user_id`` column (raw ids; ``None`` where absent or null)."""
    if USER_ID not in model_input.columns:
        return [None] * len(model_input)
    return [None if _is_null(u) else _id(u, USER_ID) for u in model_input[USER_ID]]


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def request_k(params: dict[str, Any] | None, default: int, most: int | None = None) -> int:
    """``params.k`` (the list length), at least 1 and, where the model has a hard limit, at most ``most``
    (a retriever asked for more items than the catalog holds simply returns all it has)."""
    raw = (params or {}).get("k", default)
    bounds = "at least 1" if most is None else f"between 1 and {most}"
    try:
        k = int(raw)
    except (TypeError, ValueError):
        raise bad_request(f"params.k={raw!r}: must be an integer {bounds}") from None
    if k < 1 or (most is not None and k > most):
        raise bad_request(f"params.k={k}: must be {bounds}")
    return k


def save_popularity(popularity: npt.ArrayLike, path: Path) -> Path:
    """Write ``[N]`` event counts per item index (the fallback's order) as ``.npy``; returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(popularity, dtype=np.float64))
    return path


class PopularItems:
    """The fallback list: item indices with at least one event, most events first (ties by index)."""

    def __init__(self, popularity: npt.ArrayLike, item_ids: npt.ArrayLike) -> None:
        counts = np.asarray(popularity, dtype=np.float64).copy()
        counts[: min(FIRST_INDEX, counts.size)] = 0.0
        order = np.argsort(-counts, kind="stable")
        self.order = order[counts[order] > 0]
        self.counts = counts
        self.item_ids = np.asarray(item_ids).astype(str)

    @classmethod
    def load(cls, path: str | Path, item_ids: npt.ArrayLike) -> PopularItems:
        return cls(np.load(path, allow_pickle=False), item_ids)

    def top(self, seen: set[int], k: int) -> tuple[list[str], list[float]]:
        """The ``k`` most popular items not in ``seen`` (item indices): raw ids and event counts."""
        picked: list[int] = []
        for item in self.order:
            if len(picked) == k:
                break
            if int(item) not in seen:
                picked.append(int(item))
        return [str(self.item_ids[i]) for i in picked], [float(self.counts[i]) for i in picked]


def search_answer(
    found: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float32],
    seen: Sequence[set[int]],
    k: int,
    item_ids: npt.ArrayLike,
    popular: PopularItems,
) -> pd.DataFrame:
    """The answer of a served retriever from its index search (``found`` / ``scores`` ``[R, fetch]``, best
    first, ``-1`` padding): per row the first ``k`` hits not in the row's history (``seen`` item indices),
    or, for a row with no known item, the popularity fallback; ``item_ids, scores, fallback`` columns."""
    ids = np.asarray(item_ids).astype(str)
    out_ids, out_scores, fallback = [], [], []
    for row_seen, row_ids, row_scores in zip(seen, found, scores, strict=True):
        if not row_seen:
            top_ids, top_scores = popular.top(row_seen, k)
            out_ids.append(top_ids)
            out_scores.append(top_scores)
            fallback.append(True)
            continue
        keep = [
            (int(i), float(s))
            for i, s in zip(row_ids, row_scores, strict=True)
            if i >= 0 and int(i) not in row_seen
        ][:k]
        out_ids.append([str(ids[i]) for i, _ in keep])
        out_scores.append([s for _, s in keep])
        fallback.append(False)
    return pd.DataFrame({ITEM_IDS: out_ids, SCORES: out_scores, FALLBACK: fallback})
