"""`recsys train model=dlrm` from the command line: features built on demand, Lightning + TorchRec DMP
training, test AUC / GAUC / LogLoss and the training curve in MLflow, the whole ranker published under
`train/dlrm`; then `recsys rerank model=dlrm`: the two-stage metrics over PureSVD's candidates, once
`recsys evaluate model=puresvd` has published the retriever."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow import MlflowClient

COMMON = [
    "data=movielens_100k",
    "features.split.method=random",
    "paths.root=runs",
    "spark.master='local[2]'",
    "spark.shuffle_partitions=4",
]
DATE = "1970-01-01"  # run.date's default
TWO_STAGE = ("two_stage/retrieval_ndcg_at_10", "two_stage/reranked_ndcg_at_10", "two_stage/candidate_recall")


def _recsys(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "recsys"
    return subprocess.run([str(exe), *args, *COMMON], cwd=cwd, capture_output=True, text=True, timeout=900)


def test_train_dlrm_smoke_logs_ctr_metrics_then_rerank_gives_two_stage_metrics(tmp_path: Path) -> None:
    done = _recsys(tmp_path, "train", "model=dlrm", "trainer=smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("recsys")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id], "tags.stage = 'train'")
    metrics = run.data.metrics
    assert 0.5 < metrics["test/auc"] <= 1.0  # 5 batches already beat chance on this split
    assert 0.0 < metrics["test/logloss"] < 1.0
    assert 0.0 <= metrics["test/gauc"] <= 1.0
    epochs, batches = int(run.data.params["model.epochs"]), 5  # trainer=smoke: 5 train batches per epoch
    assert len(client.get_metric_history(run.info.run_id, "train/loss")) == epochs * batches
    assert run.data.params["model.name"] == "dlrm"
    # The run's params are the groups training reads; the whole config (the split method) is its artifact.
    assert not [k for k in run.data.params if k.startswith(("features.", "spark.", "data."))]
    saved = Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path)))
    config = yaml.safe_load(saved.read_text())
    assert config["features"]["split"]["method"] == "random"
    version = client.get_model_version_by_alias("recsys-dlrm", "champion")
    assert version.run_id == run.info.run_id  # first version: no champion before, so the gate promotes it
    # Training computes no two-stage metrics any more; it publishes the ranker the rerank stage reads.
    assert not [k for k in metrics if k.startswith("two_stage/")]
    ranker = tmp_path / "runs" / DATE / "train" / "dlrm"
    assert json.loads((ranker / "manifest.json").read_text())["extra"]["run_id"] == run.info.run_id

    # Without the retriever's published vectors the rerank stage refuses, naming what is missing.
    refused = _recsys(tmp_path, "rerank", "model=dlrm")
    assert refused.returncode == 2, refused.stderr[-3000:]
    message = refused.stderr.replace("\n", "")
    assert "recsys rerank failed:" in message and str(Path("evaluate") / "puresvd") in message

    evaluated = _recsys(tmp_path, "evaluate", "model=puresvd")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    reranked = _recsys(tmp_path, "rerank", "model=dlrm")
    assert reranked.returncode == 0, reranked.stderr[-3000:]
    [rerank_run] = client.search_runs([experiment.experiment_id], "tags.stage = 'rerank'")
    assert rerank_run.data.tags["ranker_run_id"] == run.info.run_id
    assert rerank_run.data.tags["retriever"] == "puresvd"
    for name in TWO_STAGE:
        assert 0.0 <= rerank_run.data.metrics[name] <= 1.0, name
        assert name in reranked.stdout  # the summary table (results on stdout)
    assert rerank_run.data.metrics["two_stage/candidate_recall"] > 0.0
    published = json.loads(
        (tmp_path / "runs" / DATE / "rerank" / "dlrm-puresvd" / "manifest.json").read_text()
    )
    assert published["extra"]["run_id"] == rerank_run.info.run_id
    for name in TWO_STAGE:
        assert published["extra"][name] == rerank_run.data.metrics[name], name
