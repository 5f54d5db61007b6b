"""The synthetic generator is seeded, skewed like real data, and never repeats an interaction key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest

from recsys.datasets.synthetic import SyntheticSpec, generate, write

SPEC = SyntheticSpec(num_users=300, num_items=200, num_events=6000, seed=7)


def test_same_seed_same_tables_and_other_seed_differs() -> None:
    first, again = generate(SPEC), generate(SPEC)
    for name in first:
        assert first[name].equals(again[name])
    other = generate(SyntheticSpec(num_users=300, num_items=200, num_events=6000, seed=8))
    assert not first["interactions"].equals(other["interactions"])


def test_sizes_keys_and_popularity_skew() -> None:
    inter = generate(SPEC)["interactions"]
    assert inter.num_rows == SPEC.num_events
    assert len(pc.unique(inter["user_id"])) == SPEC.num_users  # every user has at least one event
    keys = set(
        zip(
            inter["user_id"].to_pylist(),
            inter["item_id"].to_pylist(),
            inter["timestamp"].to_pylist(),
            strict=True,
        )
    )
    assert len(keys) == inter.num_rows
    counts = np.sort(np.unique(inter["item_id"].to_numpy(zero_copy_only=False), return_counts=True)[1])[::-1]
    top_decile = counts[: max(1, len(counts) // 10)].sum() / counts.sum()
    assert top_decile > 0.3  # Zipf: the top 10% of items take far more than 10% of events
    ratings = inter["rating"].to_numpy(zero_copy_only=False)
    assert set(np.unique(ratings)) <= {1.0, 2.0, 3.0, 4.0, 5.0}


def test_write_reuses_identical_spec(tmp_path: Path) -> None:
    folder = write(SPEC, tmp_path / "syn")
    mtime = (folder / "interactions.parquet").stat().st_mtime_ns
    write(SPEC, folder)
    assert (folder / "interactions.parquet").stat().st_mtime_ns == mtime


def test_rejects_fewer_events_than_users() -> None:
    with pytest.raises(ValueError, match="num_events"):
        SyntheticSpec(num_users=10, num_items=5, num_events=3, seed=0)
