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
    measure_schedule,
    run_dlrm_bench,
)
from recsys.errors import ConfigError

pytestmark = pytest.mark.slow

TINY: dict[str, Any] = {
    "seed": 7,
    # every 2nd step: the thinned-out SIGTERM broadcast runs inside the timed steps too
    "trainer": {
        "sigterm_broadcast_every_n_steps": 2,
        "malloc": {"mmap_threshold_mib": 256, "trim_threshold_mib": 1024},
    },
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
    settings = TINY["bench"]["dlrm"]
    assert results["params"]["batch_size"] == settings["batch_size"]
    assert results["params"]["malloc"] == TINY["trainer"]["malloc"]
    rows = {row["engine"]: row for row in results["timings"]}
    assert [row["engine"] for row in results["timings"]] == [LIGHTNING, TORCHREC]
    samples = settings["batch_size"] * settings["num_batches"]
    for row in rows.values():
        assert row["step"] == "train 1 proc"
        steps = row["median_step_ms_per_repeat"]
        assert len(steps) == len(row["wall_seconds_per_repeat"]) == 2
        # num_batches x the median step (median of two repeats = their mean)
        assert row["seconds"] == pytest.approx(settings["num_batches"] * sum(steps) / 2 / 1000)
        assert row["samples_per_s"] == pytest.approx(samples / row["seconds"])
        assert row["wall_seconds"] == pytest.approx(sum(row["wall_seconds_per_repeat"]) / 2)
        # a step's median interval is at most the whole window
        assert 0 < min(steps) / 1000 <= min(row["wall_seconds_per_repeat"])
        assert row["minor_faults_per_step"] >= 0
    ratio = rows[LIGHTNING]["samples_per_s"] / rows[TORCHREC]["samples_per_s"]
    assert rows[LIGHTNING]["ratio"] == pytest.approx(ratio)
    assert rows[TORCHREC]["ratio"] == 1.0
    assert results["ratios"] == {"1": pytest.approx(ratio)}
    assert rows[LIGHTNING]["ratio_wall"] == pytest.approx(
        rows[TORCHREC]["wall_seconds"] / rows[LIGHTNING]["wall_seconds"]
    )
    per_repeat = [
        t / lt
        for lt, t in zip(
            rows[LIGHTNING]["median_step_ms_per_repeat"],
            rows[TORCHREC]["median_step_ms_per_repeat"],
            strict=True,
        )
    ]
    assert results["ratios_per_repeat"] == {"1": pytest.approx(per_repeat)}


def test_each_engine_times_every_post_warm_up_step() -> None:
    settings = DLRMBenchSettings.from_config(TINY)
    for engine in (LIGHTNING, TORCHREC):
        steps = measure(engine, 1, settings)[0]["steps"]
        assert len(steps) == settings.num_batches and all(s > 0 for s in steps), engine


def test_warm_up_of_zero_batches_is_refused() -> None:
    cfg = {**TINY, "bench": {"dlrm": {**TINY["bench"]["dlrm"], "warmup_batches": 0}}}
    with pytest.raises(ConfigError, match="warmup_batches"):
        DLRMBenchSettings.from_config(cfg)


def test_engines_alternate_which_runs_first() -> None:
    assert [engine_order(r) for r in range(3)] == [
        (LIGHTNING, TORCHREC),
        (TORCHREC, LIGHTNING),
        (LIGHTNING, TORCHREC),
    ]


def test_lightning_and_plain_loop_train_to_the_same_weights_one_after_the_other() -> None:
    # As the bench runs them: in the same processes, so nothing of one run may leak into the next.
    settings = DLRMBenchSettings.from_config(TINY)
    runs = measure_schedule((LIGHTNING, TORCHREC), 1, settings, keep_state=True)[0]
    assert [run["engine"] for run in runs] == [LIGHTNING, TORCHREC]
    states: dict[str, Any] = {run["engine"]: run["state"] for run in runs}
    lightning, plain = states[LIGHTNING], states[TORCHREC]
    assert lightning.keys() == plain.keys()
    tables = [k for k in plain if "embedding_bags" in k]
    assert len(tables) == TINY["bench"]["dlrm"]["num_sparse"]
    assert len(plain) > len(tables)  # dense weights too
    for key, pieces in plain.items():
        assert [offsets for offsets, _ in lightning[key]] == [offsets for offsets, _ in pieces]
        for (_, got), (_, expected) in zip(lightning[key], pieces, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=ATOL, msg=key)
