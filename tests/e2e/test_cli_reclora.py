"""`recsys train model=reclora` from the command line: features on demand, the cached long-history DLRM, the
four LM arms on a few batches, metrics in nested MLflow runs, adapters on disk, the pyfunc registered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from tests.models.test_reclora_network import save_tiny_bert

ARMS = {"conventional", "shared+retriever", "personalized+retriever", "shared", "personalized"}


def test_train_reclora_smoke_runs_the_ablation(tmp_path: Path) -> None:
    tiny = save_tiny_bert(tmp_path / "tiny-bert")
    exe = Path(sys.executable).parent / "recsys"
    args = [
        "train",
        "model=reclora",
        "trainer=smoke",
        "data=movielens_100k",
        "features.split.method=temporal",
        "paths.root=runs",
        "spark.master='local[2]'",
        "spark.shuffle_partitions=4",
        f"model.backbone.path={tiny}",
        f"features.content_encoders.text.model_path={tiny}",
        "model.lora.layers=[1]",
        "model.train.batch_size=32",
        "model.train.eval_max_samples=64",
    ]
    done = subprocess.run([str(exe), *args], cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "reclora ablation" in done.stdout and "personalized+retriever" in done.stdout
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    found = client.get_experiment_by_name("recsys")
    assert found is not None
    experiment = found.experiment_id
    [parent] = client.search_runs([experiment], "tags.stage = 'train'")
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_name = {c.info.run_name.removesuffix("-seed42"): c for c in children}  # root seed = the only seed
    assert set(by_name) == ARMS
    for child in children:
        metrics = child.data.metrics
        # 64 rows per split (trainer=smoke: 2 batches of 32); GAUC can be undefined (NaN, not logged) there.
        assert {"val/auc", "val/logloss", "test/auc", "test/logloss"} <= set(metrics)
        assert 0.0 <= metrics["test/auc"] <= 1.0
        assert 0.0 < metrics["test/logloss"] < 5.0
    shared = by_name["shared"]
    fraction = float(parent.data.params["model.train.few2many_fraction"])
    assert shared.data.params["few2many_samples"] == str(
        round(fraction * 80003)
    )  # ML-100K temporal train rows
    epochs = int(parent.data.params["model.train.epochs"])
    history = client.get_metric_history(shared.info.run_id, "train/loss")
    assert len(history) == 5 * epochs  # trainer=smoke: 5 batches per epoch
    assert (
        parent.data.metrics["test/auc_mean/personalized_retriever"]
        == by_name["personalized+retriever"].data.metrics["test/auc"]
    )
    version = client.get_model_version_by_alias("recsys-reclora", "champion")
    assert version.run_id == by_name["personalized+retriever"].info.run_id
    published = tmp_path / "runs" / "1970-01-01" / "train" / "reclora"
    adapters = published / "adapters"
    assert (adapters / "personalized" / "adapters.safetensors").is_file()
    assert (adapters / "shared" / "peft" / "adapter_config.json").is_file()
    assert (adapters / "shared" / "peft" / "adapter_model.safetensors").is_file()
    # The manifest, written last, marks train/reclora as a finished ablation and names its parts.
    manifest = json.loads((published / "manifest.json").read_text())
    assert manifest["extra"]["run_id"] == parent.info.run_id
    for arm, folder in manifest["extra"]["adapters"].items():
        assert (published / folder).is_dir(), arm
