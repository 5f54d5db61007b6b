"""Report metric names must be accepted by MLflow: stage metrics may carry characters it rejects."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

from pipelines.report import mlflow_key
from recsys.tracking.runs import configure

RAW = "train_reclora/personalized+retriever/test/auc_mean"


def test_mlflow_key_makes_a_rejected_metric_name_loggable(tmp_path: Path) -> None:
    configure(
        {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment": "t",
            "artifact_root": str(tmp_path),
        }
    )
    with mlflow.start_run() as run:
        with pytest.raises(MlflowException):
            mlflow.log_metric(RAW, 0.6)
        mlflow.log_metric(mlflow_key(RAW), 0.6)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged == {"train_reclora/personalized_retriever/test/auc_mean": 0.6}
