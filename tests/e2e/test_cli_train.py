"""`recsys train model=dlrm` from the command line: features built on demand, Lightning + TorchRec DMP
training, test AUC / GAUC / LogLoss and the training curve in MLflow."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient


def test_train_dlrm_smoke_logs_ctr_metrics(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "recsys"
    args = [
        "train",
        "model=dlrm",
        "trainer=smoke",
        "data=movielens_100k",
        "features.split.method=random",
        "paths.root=runs",
        "spark.master='local[2]'",
        "spark.shuffle_partitions=4",
    ]
    done = subprocess.run([str(exe), *args], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs(
        [client.get_experiment_by_name("recsys").experiment_id], "tags.stage = 'train'"
    )
    metrics = run.data.metrics
    assert 0.5 < metrics["test/auc"] <= 1.0  # 5 batches already beat chance on this split
    assert 0.0 < metrics["test/logloss"] < 1.0
    assert 0.0 <= metrics["test/gauc"] <= 1.0
    epochs, batches = int(run.data.params["model.epochs"]), 5  # trainer=smoke: 5 train batches per epoch
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == epochs * batches
    assert run.data.params["model.name"] == "dlrm" and run.data.params["features.split.method"] == "random"
    version = client.get_model_version_by_alias("recsys-dlrm", "champion")
    assert version.run_id == run.info.run_id  # first version: no champion before, so the gate promotes it
    assert "two-stage evaluation skipped" in done.stderr
