"""One uninterrupted pipeline run on a small synthetic snapshot, shared by the slow pipeline tests.

The kill/resume test and the Spark-cluster test compare their outputs with this run's; the 2-process
training test adds a stage on top of its published features. It runs in-process on the session's local
SparkSession (``spark`` fixture), so no second JVM is started for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from pipelines.runner import PipelineRun, run_pipeline
from recsys.config import compose, to_plain

# Small enough for seconds per stage, big enough for every split and the HNSW index to be non-trivial.
DATA = ["data=synthetic", "data.num_users=150", "data.num_items=100", "data.num_events=2000"]
SPARK = ["spark.master='local[2]'", "spark.shuffle_partitions=2", "spark.driver_memory=1g"]
# The fast stages of the demo; every other demo stage (the model trainings) is dropped.
FAST_STAGES = (
    "ingest",
    "features",
    "evaluate_mostpop",
    "evaluate_ease",
    "evaluate_puresvd",
    "index_puresvd_hnsw",
)
STAGES = [
    f"~pipeline.stages.{name}"
    for name in to_plain(compose(["pipeline=demo"]))["pipeline"]["stages"]
    if name not in FAST_STAGES
]


def small_overrides(root: Path, *extra: str) -> list[str]:
    return [f"paths.root={root}", *DATA, *SPARK, *STAGES, *extra]


def run_in_process(overrides: list[str], force: bool = False, from_stage: str | None = None) -> PipelineRun:
    cfg: dict[str, Any] = to_plain(compose(["pipeline=demo", *overrides]))
    return run_pipeline(cfg, force=force, from_stage=from_stage, overrides=overrides)


@dataclass(frozen=True)
class Reference:
    root: Path
    run: PipelineRun


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory, spark: SparkSession) -> Reference:
    root = tmp_path_factory.mktemp("reference") / "runs"
    run = run_in_process(small_overrides(root))
    return Reference(root, run)
