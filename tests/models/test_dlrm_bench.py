"""DLRM training bench on a tiny workload: result shape, and both loops compute the same training.

Every measurement starts fresh gloo processes (``elastic_launch``), hence ``slow``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models.dlrm.bench import (
    LIGHTNING,
    TORCHREC,
    DLRMBenchSettings,
    engine_order,
    measure,
    run_dlrm_bench,
)

pytestmark = pytest.mark.slow

TINY: dict[str, Any] = {
    "seed": 7,
    "bench": {
        "dlrm": {
            "batch_size": 64,
            "num_batches": 4,
            "warmup_batches": 2,
            "num_dense": 3,
            "num_sparse": 4,
            "rows_per_table": 100,
            "embedding_dim": 8,
            "world_sizes": [1],
            "repeats": 2,
            "out_dir": "unused",
        }
    },
}
ATOL = 1e-5


def test_tiny_bench_reports_both_engines_and_their_ratio() -> None:
    results = run_dlrm_bench(TINY)
    assert set(results) == {"params", "timings", "ratios", "ratios_per_repeat"}
    assert results["params"]["batch_size"] == TINY["bench"]["dlrm"]["batch_size"]
    rows = {row["engine"]: row for row in results["timings"]}
    assert [row["engine"] for row in results["timings"]] == [LIGHTNING, TORCHREC]
    for row in rows.values():
        assert set(row) == {"engine", "step", "seconds", "samples_per_s", "ratio", "seconds_per_repeat"}
        assert row["step"] == "train 1 proc"
        assert len(row["seconds_per_repeat"]) == 2
        assert row["seconds"] == pytest.approx(sum(row["seconds_per_repeat"]) / 2)  # median of two
        assert row["seconds"] > 0 and row["samples_per_s"] > 0
    ratio = rows[LIGHTNING]["samples_per_s"] / rows[TORCHREC]["samples_per_s"]
    assert rows[LIGHTNING]["ratio"] == pytest.approx(ratio)
    assert rows[TORCHREC]["ratio"] == 1.0
    assert results["ratios"] == {"1": pytest.approx(ratio)}
    per_repeat = [
        t / lt
        for lt, t in zip(
            rows[LIGHTNING]["seconds_per_repeat"], rows[TORCHREC]["seconds_per_repeat"], strict=True
        )
    ]
    assert results["ratios_per_repeat"] == {"1": pytest.approx(per_repeat)}


def test_engines_alternate_which_runs_first() -> None:
    assert [engine_order(r) for r in range(3)] == [
        (LIGHTNING, TORCHREC),
        (TORCHREC, LIGHTNING),
        (LIGHTNING, TORCHREC),
    ]


def test_lightning_and_plain_loop_train_to_the_same_weights() -> None:
    settings = DLRMBenchSettings.from_config(TINY)
    states: dict[str, Any] = {
        engine: measure(engine, 1, settings, keep_state=True)[0]["state"] for engine in (LIGHTNING, TORCHREC)
    }
    lightning, plain = states[LIGHTNING], states[TORCHREC]
    assert lightning.keys() == plain.keys()
    tables = [k for k in plain if "embedding_bags" in k]
    assert len(tables) == TINY["bench"]["dlrm"]["num_sparse"]
    assert len(plain) > len(tables)  # dense weights too
    for key, pieces in plain.items():
        assert [offsets for offsets, _ in lightning[key]] == [offsets for offsets, _ in pieces]
        for (_, got), (_, expected) in zip(lightning[key], pieces, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=ATOL, msg=key)
