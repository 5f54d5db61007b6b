"""DLRM training bench on a tiny workload: result shape, the interleaved timing, and both loops compute the
same training.

Every measurement starts fresh gloo processes (``elastic_launch``), hence ``slow``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
import torch

from models.dlrm.bench import (
    LIGHTNING,
    PLAIN_AFTER,
    PLAIN_BEFORE,
    TORCHREC,
    DLRMBenchSettings,
    InterleavedSteps,
    bench_model,
    measure,
    placement,
    run_dlrm_bench,
)
from models.dlrm.config import DLRMBenchConfig, DLRMConfig
from models.schemas import register_model_schemas
from recsys.allocator import MallocSettings
from recsys.config import compose, to_plain, typed
from recsys.errors import ConfigError

pytestmark = pytest.mark.slow
register_model_schemas()

TINY: dict[str, Any] = {
    "seed": 7,
    # every 2nd step: the thinned-out SIGTERM broadcast runs inside the timed steps too
    "model": to_plain(compose(["model=dlrm_criteo", "model.sigterm_broadcast_every_n_steps=2"]))["model"],
    "bench": {
        "name": "dlrm",
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
    },
}
ATOL = 1e-5


def tiny_settings(cfg: dict[str, Any] = TINY) -> DLRMBenchSettings:
    """As ``run_dlrm_bench`` reads them."""
    bench = typed(DLRMBenchConfig, cfg["bench"], "bench")
    return DLRMBenchSettings.of(bench, bench_model(cfg), int(cfg["seed"]))


def test_tiny_bench_reports_both_engines_and_their_ratio() -> None:
    results = run_dlrm_bench(TINY)
    assert set(results) == {"params", "timings", "ratios", "ratios_per_repeat"}
    settings = TINY["bench"]
    assert results["params"]["batch_size"] == settings["batch_size"]
    assert results["params"]["malloc"] == TINY["model"]["malloc"]
    assert results["params"]["sigterm_broadcast_every_n_steps"] == 2
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
    of_medians = rows[LIGHTNING]["samples_per_s"] / rows[TORCHREC]["samples_per_s"]
    assert rows[LIGHTNING]["ratio_of_medians"] == pytest.approx(of_medians)
    assert rows[TORCHREC]["ratio"] == rows[TORCHREC]["ratio_of_medians"] == 1.0
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
    # the headline pairs the runs of each repeat: median of the per-repeat ratios (of two = their mean)
    assert rows[LIGHTNING]["ratio"] == pytest.approx(sum(per_repeat) / 2)
    assert results["ratios"] == {"1": pytest.approx(sum(per_repeat) / 2)}


def test_each_engine_times_every_post_warm_up_step_in_both_placements() -> None:
    settings = tiny_settings()
    runs = measure(1, settings)[0]
    assert [run["placement"] for run in runs] == [PLAIN_AFTER, PLAIN_BEFORE]
    for run in runs:
        for engine in (LIGHTNING, TORCHREC):
            steps = run["engines"][engine]["steps"]
            assert len(steps) == settings.num_batches and all(s > 0 for s in steps), engine
            assert run["engines"][engine]["faults_per_step"] >= 0


class SleepingStep:
    """A plain loop whose every step takes ``seconds``."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.indices: list[int] = []

    def step(self, index: int) -> None:
        self.indices.append(index)
        time.sleep(self.seconds)


@pytest.mark.parametrize("where", [PLAIN_AFTER, PLAIN_BEFORE])
def test_each_engine_is_charged_its_own_time(where: str) -> None:
    # A stand-in for Lightning's loop (its step takes LIGHTNING_S) drives the callback: every interval goes
    # to the engine that spent it, whichever side of the Lightning step the plain step sits on.
    lightning_s, plain_s = 0.004, 0.012
    settings = tiny_settings()
    plain = SleepingStep(plain_s)
    steps = InterleavedSteps(plain, settings, where)
    trainer: Any = None
    for index in range(settings.total_batches):
        steps.on_train_batch_start(trainer, trainer, None, index)
        time.sleep(lightning_s)
        steps.on_train_batch_end(trainer, trainer, None, None, index)
    assert plain.indices == list(range(settings.total_batches))
    timed = steps.timed()
    for engine, seconds in ((LIGHTNING, lightning_s), (TORCHREC, plain_s)):
        assert len(timed[engine]["steps"]) == settings.num_batches
        # sleeps last at least as long as asked, and on a busy machine a few ms longer
        assert seconds <= statistics.median(timed[engine]["steps"]) < seconds + 0.004, engine


def test_warm_up_of_zero_batches_is_refused() -> None:
    cfg = {**TINY, "bench": {**TINY["bench"], "warmup_batches": 0}}
    with pytest.raises(ConfigError, match="warmup_batches"):
        tiny_settings(cfg)


def test_bench_settings_come_from_the_bench_group_and_the_dlrm_model_conf() -> None:
    # `recsys bench dlrm` composes bench=dlrm; the default model (mostpop) is no DLRM: dlrm_criteo's settings
    cfg = to_plain(compose(["bench=dlrm"]))
    assert cfg["model"]["family"] != "dlrm"
    settings = tiny_settings(cfg)
    criteo = typed(DLRMConfig, compose(["model=dlrm_criteo"])["model"], "model")
    assert settings.world_sizes == (1, 2) and settings.seed == cfg["seed"]
    assert settings.dense_hidden == criteo.dense_arch_layer_sizes[:-1] and settings.optim == criteo.optim
    assert settings.sigterm_broadcast_every_n_steps == 20 and settings.malloc == MallocSettings(256, 1024)
    # a DLRM model given on the command line is the one used (its malloc=null too)
    settings = tiny_settings(to_plain(compose(["bench=dlrm", "model=dcn", "model.malloc=null"])))
    assert settings.malloc is None and settings.dense_hidden == (64,)


def test_misspelled_or_ill_typed_bench_keys_are_named() -> None:
    with pytest.raises(ConfigError, match=r"bench\.num_batchs"):
        compose(["bench=dlrm", "+bench.num_batchs=3"])
    with pytest.raises(ConfigError, match=r"bench\.repeats"):
        compose(["bench=dlrm", "bench.repeats=many"])


def test_repeats_alternate_where_the_plain_step_sits() -> None:
    assert [placement(r) for r in range(3)] == [PLAIN_AFTER, PLAIN_BEFORE, PLAIN_AFTER]


def test_interleaved_lightning_and_plain_loop_train_to_the_same_weights() -> None:
    # As the bench runs them: step by step in turn, in the same process, each on its own copy of the batches.
    settings = tiny_settings()
    for run in measure(1, settings, keep_state=True)[0]:
        lightning, plain = run["state"][LIGHTNING], run["state"][TORCHREC]
        assert lightning.keys() == plain.keys()
        tables = [k for k in plain if "embedding_bags" in k]
        assert len(tables) == TINY["bench"]["num_sparse"]
        assert len(plain) > len(tables)  # dense weights too
        for key, pieces in plain.items():
            assert [offsets for offsets, _ in lightning[key]] == [offsets for offsets, _ in pieces]
            for (_, got), (_, expected) in zip(lightning[key], pieces, strict=True):
                torch.testing.assert_close(got, expected, rtol=0, atol=ATOL, msg=key)
