"""Seeded synthetic interactions of any size, in the canonical schema, written as Parquet.

Shape of the data (so models have something to learn and benchmarks see realistic skew):
* item popularity follows a Zipf law; each user prefers one category and draws part of the events from it;
* user activity is log-normal; events come in sessions (seconds apart) separated by gaps (about a day);
* ratings = global mean + user bias + item bias + noise, rounded to 1..5 stars.
Timestamps strictly increase per user, so (user, item, timestamp) never repeats.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recsys.manifest import config_hash, publish_atomically
from recsys.schema import INTERACTIONS, ITEMS

_ADJECTIVES = ("red", "quiet", "rapid", "golden", "hidden", "lucky", "brave", "silver", "wild", "gentle")
_NOUNS = ("river", "engine", "garden", "signal", "harbor", "lantern", "falcon", "canyon", "orbit", "meadow")
# Calendar anchor of the generated history: 2020-01-01T00:00:00Z, spread over one year.
_START = 1_577_836_800
_SPAN_SECONDS = 365 * 24 * 3600
_SESSION_GAP_MEAN_SECONDS = 24 * 3600.0
_IN_SESSION_GAP_MEAN_SECONDS = 120.0
_IN_TASTE_PROBABILITY = 0.5
_NUM_SEGMENTS = 5
PARAMS_FILE = "params.json"


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines the generated data; equal specs give byte-identical tables."""

    num_users: int
    num_items: int
    num_events: int
    seed: int
    zipf_exponent: float = 1.1
    mean_session_length: float = 5.0
    num_categories: int = 20
    rated_fraction: float = 1.0

    def __post_init__(self) -> None:
        if self.num_events < self.num_users:
            raise ValueError(f"num_events ({self.num_events}) must be >= num_users ({self.num_users}).")
        if min(self.num_users, self.num_items, self.num_categories) < 1:
            raise ValueError("num_users, num_items and num_categories must be positive.")


def _ids(prefix: str, values: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(values), pa.string()), "")


def generate(spec: SyntheticSpec) -> dict[str, pa.Table]:
    """Return ``interactions``, ``items`` and ``users`` Arrow tables in the canonical schema."""
    rng = np.random.default_rng(spec.seed)
    n_users, n_items, n_events = spec.num_users, spec.num_items, spec.num_events

    item_category = rng.integers(0, spec.num_categories, size=n_items)
    popularity = 1.0 / np.arange(1, n_items + 1, dtype=np.float64) ** spec.zipf_exponent
    popularity /= popularity.sum()
    rank_to_item = rng.permutation(n_items)
    # Items of each category ordered by popularity rank, for in-taste draws.
    by_category = np.lexsort((np.argsort(rank_to_item), item_category))
    cat_sizes = np.bincount(item_category, minlength=spec.num_categories)
    cat_offsets = np.concatenate(([0], np.cumsum(cat_sizes)[:-1]))

    activity = rng.lognormal(0.0, 1.0, size=n_users)
    counts = 1 + rng.multinomial(n_events - n_users, activity / activity.sum())
    user = np.repeat(np.arange(n_users), counts)
    preferred = rng.integers(0, spec.num_categories, size=n_users)
    preferred = np.where(cat_sizes[preferred] > 0, preferred, item_category[0])

    rank = rng.choice(n_items, size=n_events, p=popularity)
    item = rank_to_item[rank]
    in_taste = rng.random(n_events) < _IN_TASTE_PROBABILITY
    cat = preferred[user]
    taste_item = by_category[cat_offsets[cat] + rank % np.maximum(cat_sizes[cat], 1)]
    item = np.where(in_taste, taste_item, item)

    new_session = rng.random(n_events) < 1.0 / spec.mean_session_length
    gaps = (
        np.where(
            new_session,
            rng.exponential(_SESSION_GAP_MEAN_SECONDS, n_events),
            rng.exponential(_IN_SESSION_GAP_MEAN_SECONDS, n_events),
        ).astype(np.int64)
        + 1
    )
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    cumulative = np.cumsum(gaps)
    start = rng.integers(_START, _START + _SPAN_SECONDS, size=n_users)
    timestamp = start[user] + cumulative - cumulative[first][user]

    user_bias = rng.normal(0.0, 0.5, n_users)
    item_bias = rng.normal(0.0, 0.5, n_items)
    stars = np.clip(np.rint(3.5 + user_bias[user] + item_bias[item] + rng.normal(0, 0.7, n_events)), 1, 5)
    rated = rng.random(n_events) < spec.rated_fraction
    rating = pa.array(stars, mask=~rated)

    interactions = pa.table(
        {
            "user_id": _ids("u", user),
            "item_id": _ids("i", item),
            "timestamp": pa.array(timestamp, pa.int64()),
            "rating": rating,
            "label": pa.nulls(n_events, pa.int32()),
            "event_type": pa.array(np.where(rated, "rating", "view")),
        },
        schema=INTERACTIONS.to_arrow(),
    )

    second = rng.integers(0, spec.num_categories, size=n_items)
    adjective = np.array(_ADJECTIVES)[rng.integers(0, len(_ADJECTIVES), n_items)]
    noun = np.array(_NOUNS)[rng.integers(0, len(_NOUNS), n_items)]
    categories = [
        sorted({f"category_{a:02d}", f"category_{b:02d}"}) for a, b in zip(item_category, second, strict=True)
    ]
    items = pa.table(
        {
            "item_id": _ids("i", np.arange(n_items)),
            "title": pa.array(
                [f"The {a} {n} {i}" for i, (a, n) in enumerate(zip(adjective, noun, strict=True))]
            ),
            "text": pa.array([f"A {a} story about a {n}." for a, n in zip(adjective, noun, strict=True)]),
            "categories": pa.array(categories, pa.list_(pa.string())),
            "image_path": pa.nulls(n_items, pa.string()),
        },
        schema=ITEMS.to_arrow(),
    )
    users = pa.table(
        {
            "user_id": _ids("u", np.arange(n_users)),
            "segment": _ids("s", rng.integers(0, _NUM_SEGMENTS, n_users)),
        }
    )
    return {"interactions": interactions, "items": items, "users": users}


def write(spec: SyntheticSpec, folder: Path, row_group_size: int = 1_000_000) -> Path:
    """Generate into ``folder`` unless an identical spec is already there; published atomically."""
    params = asdict(spec)
    marker = folder / PARAMS_FILE
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return folder
    with publish_atomically(folder) as staging:
        for name, table in generate(spec).items():
            pq.write_table(table, staging / f"{name}.parquet", row_group_size=row_group_size)
        (staging / PARAMS_FILE).write_text(json.dumps(params, sort_keys=True))
    return folder


def default_folder(root: Path, spec: SyntheticSpec) -> Path:
    return root / "_synthetic" / config_hash(asdict(spec))[:16]
