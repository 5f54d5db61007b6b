"""2-process training inside the pipeline: a ``train`` stage with ``trainer=ddp_cpu`` runs the DLRM trainer
in two gloo processes (``launch_local``), not by Lightning re-running the pipeline's command line; rank 0
publishes the whole ranker under ``train/dlrm``, which the ``rerank`` stage then scores candidates with."""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import pyarrow.compute as pc
import pytest
import torch
from mlflow import MlflowClient

from pipelines.markers import read_marker
from pipelines.runner import RAN, SKIPPED, run_pipeline
from recsys.config import compose, to_plain
from recsys.manifest import read_manifest
from recsys.tables import read_arrow
from tests.models.test_dlrm_pyfunc import as_input
from tests.pipelines.conftest import Reference, small_overrides

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DATE = "1998-04-23"
# conf/model/dlrm.yaml's tables plus one per user attribute the data declares (the synthetic data: segment);
# no table override needed for data that is not MovieLens.
TABLES = ("t_user", "t_item", "t_recent_items", "t_category", "t_segment")
TRAIN_STAGE: dict[str, Any] = {
    "kind": "train",
    "needs": ["features"],
    "metric": "test/auc",
    "overrides": [
        "model=dlrm",
        "trainer=ddp_cpu",
        "model.epochs=1",
        "model.batch_size=32",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
    ],
}
# The two-stage metrics: the published ranker re-ranks the reference run's PureSVD candidates.
RERANK_STAGE: dict[str, Any] = {
    "kind": "rerank",
    "needs": ["train", "evaluate_puresvd"],
    "metric": "two_stage/reranked_ndcg_at_10",
    "overrides": ["model=dlrm"],
}
TWO_STAGE = ("two_stage/retrieval_ndcg_at_10", "two_stage/reranked_ndcg_at_10", "two_stage/candidate_recall")


def test_train_stage_with_ddp_cpu_runs_two_processes(reference_run: Reference) -> None:
    overrides = small_overrides(reference_run.root)
    cfg = to_plain(compose(["pipeline=demo", *overrides]))
    stages = cfg["pipeline"]["stages"]
    cfg["pipeline"]["stages"] = {
        "ingest": stages["ingest"],
        "features": stages["features"],
        "evaluate_puresvd": stages["evaluate_puresvd"],
        "train": TRAIN_STAGE,
        "rerank": RERANK_STAGE,
    }
    run = run_pipeline(cfg, overrides=overrides)
    statuses = {r.name: r.status for r in run.results}
    # The published features and retriever of the reference run are reused: only training and re-ranking run.
    assert statuses == {
        "ingest": SKIPPED,
        "features": SKIPPED,
        "evaluate_puresvd": SKIPPED,
        "train": RAN,
        "rerank": RAN,
    }
    marker = read_marker(reference_run.root / DATE, "train")
    assert marker is not None and marker.mlflow_run_id is not None
    assert marker.metrics["train.world_size"] == 2
    assert 0.0 <= marker.metrics["test/auc"] <= 1.0
    client = MlflowClient(tracking_uri=f"sqlite:///{reference_run.root.resolve()}/mlflow.db")
    logged = client.get_run(marker.mlflow_run_id)
    assert logged.data.params["trainer.devices"] == "2"
    assert logged.data.metrics["test/auc"] == pytest.approx(marker.metrics["test/auc"])
    # Training logs no two-stage metrics any more: they belong to the rerank stage.
    assert not [k for k in (*marker.metrics, *logged.data.metrics) if k.startswith("two_stage/")]
    # Rank 0 published the whole ranker under train/dlrm.
    assert list(marker.outputs) == ["train/dlrm"]
    published = read_manifest(reference_run.root / DATE / "train" / "dlrm")
    assert published.extra["run_id"] == marker.mlflow_run_id

    # The rerank stage scored the retriever's candidates with that whole ranker.
    reranked = read_marker(reference_run.root / DATE, "rerank")
    assert reranked is not None and reranked.mlflow_run_id is not None
    assert reranked.mlflow_run_id != marker.mlflow_run_id
    assert list(reranked.outputs) == ["rerank/dlrm-puresvd"]
    rerank_run = client.get_run(reranked.mlflow_run_id)
    assert rerank_run.data.tags["ranker_run_id"] == marker.mlflow_run_id
    for name in TWO_STAGE:
        assert 0.0 <= reranked.metrics[name] <= 1.0, name
        assert rerank_run.data.metrics[name] == pytest.approx(reranked.metrics[name]), name
    assert (
        reranked.metrics["two_stage/reranked_ndcg_at_10"]
        != reranked.metrics["two_stage/retrieval_ndcg_at_10"]
    )

    # Rank 0 exported the pyfunc from the sharded checkpoint: every table whole, whichever rank held it.
    mlflow.set_tracking_uri(f"sqlite:///{reference_run.root.resolve()}/mlflow.db")
    [version] = client.search_model_versions(f"run_id='{marker.mlflow_run_id}'")
    loaded = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    ranker = loaded.unwrap_python_model().scorer.ranker
    tables = {k: v for k, v in ranker.state_dict().items() if "embedding_bags" in k}
    assert {name.split("embedding_bags.")[1].split(".")[0] for name in tables} == set(TABLES), sorted(tables)
    for name, weight in tables.items():
        assert torch.count_nonzero(weight) == weight.numel(), name  # trained or initialised, never zeros
    ctr = read_arrow(reference_run.root / DATE / "features" / "ctr")
    columns = loaded.metadata.get_input_schema().input_names()
    rows = as_input(ctr.filter(pc.equal(ctr["split"], "test")).slice(0, 50).to_pandas(), columns)
    scores = loaded.predict(rows)["score"].to_numpy()
    assert np.all((scores > 0) & (scores < 1)) and np.ptp(scores) > 0
