"""``recsys bench scaling`` run as a user would, on a tiny size of a three-stage pipeline: every stage's
time, CPU and memory in the JSON; a size over its memory budget is stopped with the stage and the resource
named, instead of being left to the kernel's OOM killer; slopes and the plot over several sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipelines.scaling import SizeOutcome, plot, slope, stage_slopes
from recsys.settings import ScalingSize

SMOKE_PIPELINE = """
name: scaling_smoke
overrides: [data=synthetic, spark=local, run.date=2021-01-01]
hash_exclude: [bench]
stages:
  ingest: {kind: ingest}
  features: {kind: features, needs: [ingest]}
  evaluate_mostpop: {kind: evaluate, overrides: [model=mostpop], needs: [features]}
report: {split: test, k: 10, ranking_metrics: [ndcg]}
"""
STAGES = ["ingest", "features", "evaluate_mostpop"]
ONE_SIZE = "[{events:3000,users:150,items:80}]"
TWO_SIZES = "[{events:3000,users:150,items:80},{events:6000,users:300,items:120}]"


def _bench(
    tmp_path: Path, sizes: str, *overrides: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    conf = tmp_path / "conf"
    (conf / "pipeline").mkdir(parents=True, exist_ok=True)
    (conf / "pipeline" / "scaling_smoke.yaml").write_text(SMOKE_PIPELINE)
    out = tmp_path / "results"
    command = [
        str(Path(sys.executable).parent / "recsys"),
        "bench",
        "scaling",
        "bench.pipeline=scaling_smoke",
        f"bench.sizes={sizes}",
        "bench.overrides=['spark.shuffle_partitions=2','spark.driver_memory=1g']",
        f"bench.work_dir={tmp_path / 'work'}",
        f"bench.out_dir={out}",
        "bench.sample_interval_s=0.1",
        *overrides,
    ]
    env = {**os.environ, "RECSYS_CONFIG_PATH": str(conf)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    files = sorted(out.glob("scaling-*.json"))
    assert len(files) == 1, done.stdout + done.stderr
    return done, json.loads(files[0].read_text())


def test_every_stage_is_measured_in_the_json_with_its_workers(tmp_path: Path) -> None:
    done, results = _bench(tmp_path, ONE_SIZE)
    assert done.returncode == 0, done.stdout + done.stderr
    [size] = results["sizes"]
    assert size["events"] == 3000 and size["completed"]
    assert set(size["stages"]) == {"generate", *STAGES}
    for name in STAGES:
        cost = size["stages"][name]
        assert cost["wall_s"] > 0 and cost["cpu_s"] > 0 and cost["peak_rss_mb"] > 100
    # The Spark stages' JVM is counted with the driver, in the stage and in the whole run.
    assert size["stages"]["features"]["peak_workers_rss_mb"] > 100
    total = size["pipeline"]
    assert total["wall_s"] >= sum(size["stages"][n]["wall_s"] for n in STAGES)
    assert total["cpu_s"] >= 0.9 * sum(size["stages"][n]["cpu_s"] for n in STAGES)
    assert results["slopes"]["ingest"] == {"sizes": 1, "time": None, "cpu": None, "memory": None}
    assert "peak resident memory" in done.stdout and str(tmp_path / "results") in done.stdout


def _outcome(events: int, seconds: float, memory_mb: float) -> SizeOutcome:
    cost = {"wall_s": seconds, "cpu_s": seconds, "peak_rss_mb": memory_mb}
    return SizeOutcome(ScalingSize(events, events // 20, events // 50), {"features": cost}, completed=True)


def test_slopes_and_plot_over_sizes(tmp_path: Path) -> None:
    # Time grows linearly, memory with the square root.
    outcomes = [_outcome(10**6, 10.0, 1000.0), _outcome(10**7, 100.0, 1000.0 * 10**0.5)]
    slopes = stage_slopes(outcomes, ["features"])["features"]
    assert slopes["time"] == pytest.approx(1.0) and slopes["memory"] == pytest.approx(0.5)
    path = plot(outcomes, ["features"], tmp_path / "scaling.png")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG" and path.stat().st_size > 10_000
    assert plot(outcomes[:1], ["features"], tmp_path / "one.png") is None


def test_a_size_over_its_memory_budget_is_stopped_naming_the_stage_and_resource(tmp_path: Path) -> None:
    done, results = _bench(tmp_path, TWO_SIZES, "bench.memory_limit_gb=0.4")
    [size] = results["sizes"]  # the larger size is not tried after the first one stopped
    assert not size["completed"]
    assert size["stopped"]["stage"] == "ingest" and size["stopped"]["resource"] == "memory"
    assert "bench.memory_limit_gb=0.4" in size["stopped"]["detail"]
    assert "sizes that did not finish" in done.stdout


@pytest.mark.parametrize(
    ("values", "expected"),
    [([1.0, 10.0, 100.0], 1.0), ([1.0, 100.0, 10_000.0], 2.0), ([5.0, 5.0, 5.0], 0.0)],
)
def test_slope_is_the_log_log_growth_rate(values: list[float], expected: float) -> None:
    assert slope([1e6, 1e7, 1e8], values) == pytest.approx(expected)
    assert slope([1e6], [1.0]) is None
