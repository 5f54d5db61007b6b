"""DLRM training bench on a tiny workload: result shape, and both loops compute the same training.

Every measurement starts fresh gloo processes (``elastic_launch``), hence ``slow``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models.dlrm.bench import LIGHTNING, TORCHREC, DLRMBenchSettings, measure, run_dlrm_bench

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
            "out_dir": "unused",
        }
    },
}
ATOL = 1e-5


def test_tiny_bench_reports_both_engines_and_their_ratio() -> None:
    results = run_dlrm_bench(TINY)
    assert set(results) == {"params", "timings", "ratios"}
    assert results["params"]["batch_size"] == TINY["bench"]["dlrm"]["batch_size"]
    rows = {row["engine"]: row for row in results["timings"]}
    assert [row["engine"] for row in results["timings"]] == [LIGHTNING, TORCHREC]
    for row in rows.values():
        assert set(row) == {"engine", "step", "seconds", "samples_per_s", "ratio"}
        assert row["step"] == "train 1 proc"
        assert row["seconds"] > 0 and row["samples_per_s"] > 0
    ratio = rows[LIGHTNING]["samples_per_s"] / rows[TORCHREC]["samples_per_s"]
    assert rows[LIGHTNING]["ratio"] == pytest.approx(ratio)
    assert rows[TORCHREC]["ratio"] == 1.0
    assert results["ratios"] == {"1": pytest.approx(ratio)}


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
