"""`recsys train model=sasrec` then `recsys index model=sasrec index=hnsw` from the command line: features
built on demand, a smoke Lightning fit with full-ranking validation, the published `train/sasrec` folder
(with the model's own user vectors), the `sequential` and `retriever` registrations, and candidates from the
index."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from models.sequential.pyfunc import SequentialRetriever
from recsys.tables import read_arrow
from recsys.tracking.requests import HISTORY, ITEM_IDS

DATE = "1998-04-23"


def recsys(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "recsys"
    common = [
        "data=movielens_100k",
        "paths.root=runs",
        f"run.date={DATE}",
        "spark.master='local[2]'",
        "spark.shuffle_partitions=4",
    ]
    return subprocess.run(
        [str(exe), *args, *common], cwd=tmp_path, capture_output=True, text=True, timeout=900
    )


def test_train_sasrec_then_index_hnsw(tmp_path: Path) -> None:
    trained = recsys(
        tmp_path,
        "train",
        "model=sasrec",
        "trainer=smoke",
        "model.max_epochs=2",
        "model.hidden_dim=16",
        "model.max_len=20",
        "model.seeds=[1,2]",
    )
    assert trained.returncode == 0, trained.stderr[-3000:] + trained.stdout[-3000:]
    evaluated = tmp_path / "runs" / DATE / "train" / "sasrec"
    manifest = json.loads((evaluated / "manifest.json").read_text())
    assert manifest["extra"]["user_vectors"] == "user_vectors.npy"
    items = np.load(evaluated / "item_vectors.npy")
    users = np.load(evaluated / "user_vectors.npy")
    assert items.shape[1] == users.shape[1] == 16
    assert np.count_nonzero(users[:2]) == 0 and np.count_nonzero(users[2:], axis=1).all()  # reserved rows
    metrics = read_arrow(evaluated / "metrics").to_pandas()
    assert {"valid", "test"} <= set(metrics["split"])  # the evaluation split names (MLflow keys say `val/`)
    assert {"items_le20", "1-20", "151+"} <= set(metrics["bucket"])

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    found = client.get_experiment_by_name("recsys")
    assert found is not None
    experiment = found.experiment_id
    seed_runs = client.search_runs([experiment], "tags.stage = 'train'")
    assert sorted(r.data.params["seed"] for r in seed_runs) == ["1", "2"]
    for run in seed_runs:
        history = client.get_metric_history(run.info.run_id, "val/ndcg_at_10")
        # One full-ranking validation per epoch, then the restored best epoch's evaluation under the same key
        # (the evaluation split `valid` is logged as `val/`) at the last step, so it is the latest value.
        assert len(history) == 2 + 1
        latest = max(history, key=lambda h: (h.step, h.timestamp))
        assert latest.step >= max(h.step for h in history[:-1] if h is not latest)
        assert run.data.metrics["val/ndcg_at_10"] == latest.value
        assert not [k for k in run.data.metrics if k.startswith("valid/")]
        assert 0.0 <= run.data.metrics["test/ndcg_at_10"] <= 1.0
    published_run = manifest["extra"]["run_id"]
    overall = metrics[(metrics["bucket"] == "all") & (metrics["metric"] == "ndcg") & (metrics["k"] == 10)]
    logged = client.get_run(published_run).data.metrics
    for split, key in (("valid", "val/ndcg_at_10"), ("test", "test/ndcg_at_10")):
        [value] = overall[overall["split"] == split]["value"]
        assert logged[key] == pytest.approx(value), key
    [summary] = client.search_runs([experiment], "tags.stage = 'train-seeds'")
    assert "seeds/test_ndcg_at_10/mean" in summary.data.metrics
    assert client.get_model_version_by_alias("recsys-sequential", "champion").run_id in {
        r.info.run_id for r in seed_runs
    }
    assert "mean" in trained.stdout and "std" in trained.stdout  # the summary table (results on stdout)

    indexed = recsys(tmp_path, "index", "model=sasrec", "index=hnsw")
    assert indexed.returncode == 0, indexed.stderr[-3000:] + indexed.stdout[-3000:]
    candidates = read_arrow(tmp_path / "runs" / DATE / "candidates" / "sasrec").to_pandas()
    assert len(candidates) == 943
    retriever = client.get_model_version_by_alias("recsys-retriever", "champion")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    loaded = mlflow.pyfunc.load_model(f"models:/recsys-retriever/{retriever.version}")
    # the sequence model's own encoder serves, not the fold-in retriever of matrix models
    assert isinstance(loaded.unwrap_python_model(), SequentialRetriever)
    answer = loaded.predict(pd.DataFrame({HISTORY: [["50", "172", "133"]]}), params={"k": 5})
    assert len(answer[ITEM_IDS].iloc[0]) == 5 and not {"50", "172", "133"} & set(answer[ITEM_IDS].iloc[0])

    # `recsys bench sequential` on the same snapshot: SASRec in Lightning and in the plain loop.
    benched = recsys(tmp_path, "bench", "sequential", "bench.epochs=2", "bench.models=[sasrec]")
    assert benched.returncode == 0, benched.stderr[-3000:] + benched.stdout[-3000:]
    [saved] = (tmp_path / "bench_results").glob("sequential-*.json")
    results = json.loads(saved.read_text())
    rows = {row["engine"]: row for row in results["timings"]}
    assert set(rows) == {"sasrec lightning", "sasrec plain PyTorch loop"}
    plain, lightning = rows["sasrec plain PyTorch loop"], rows["sasrec lightning"]
    assert plain["ratio"] == 1.0
    # ratio = Lightning samples/s over the plain loop's (the DLRM bench's convention)
    assert lightning["ratio"] == pytest.approx(lightning["samples_per_s"] / plain["samples_per_s"])
    assert all(len(row["epochs_wall_cpu"]) == 2 and row["seconds"] > 0 for row in rows.values())
    assert results["train_sequences"] == 943
