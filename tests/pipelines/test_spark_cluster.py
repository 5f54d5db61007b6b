"""The features stages against a real Spark standalone cluster on loopback (master + worker from pyspark's
own scripts, see ``spark_cluster.py``): ``spark=cluster spark.master=spark://127.0.0.1:PORT`` gives
exactly the outputs of the local reference run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines.compare import assert_same_tables
from tests.pipelines.conftest import DATA, STAGES, Reference
from tests.pipelines.spark_cluster import HOST, standalone_cluster

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.spark]

DATE = "1998-04-23"
TIMEOUT_S = 600
ONLY_SPARK_STAGES = [
    "~pipeline.stages.evaluate_mostpop",
    "~pipeline.stages.evaluate_ease",
    "~pipeline.stages.evaluate_puresvd",
    "~pipeline.stages.index_puresvd_hnsw",
]


def test_features_on_a_standalone_cluster_equal_a_local_run(tmp_path: Path, reference_run: Reference) -> None:
    root = tmp_path / "runs"
    with standalone_cluster(tmp_path / "cluster") as cluster:
        overrides = [
            f"paths.root={root}",
            *DATA,
            "spark=cluster",
            f"spark.master={cluster.master_url}",
            "spark.shuffle_partitions=2",
            *STAGES,
            *ONLY_SPARK_STAGES,
        ]
        exe = Path(sys.executable).parent / "recsys"
        # The driver must advertise the loopback address the worker can reach.
        env = {**os.environ, "SPARK_LOCAL_IP": HOST, "COLUMNS": "200"}
        done = subprocess.run(
            [str(exe), "pipeline", "run", "pipeline=demo", *overrides],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT_S,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        # The work ran on the cluster: the master accepted the application and the worker ran its executor.
        assert "Registering app recsys" in cluster.master_log()
        [app] = cluster.applications()
        assert "0" in [p.name for p in app.iterdir() if p.is_dir()]  # executor 0 ran on the worker
    folder = root / DATE
    for stage in ("ingest", "features"):
        names = assert_same_tables(folder / stage, reference_run.root / DATE / stage)
        assert "split" in names or stage == "ingest"
