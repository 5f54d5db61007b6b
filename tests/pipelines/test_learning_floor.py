"""A training made to fail on purpose (learning rate 0) trains without error and ranks below MostPop: the
stage exits 2 naming the floor, publishes nothing, registers nothing, and its MLflow run is marked FAILED
with the reason; the same command under trainer=smoke (a wiring run) is not held to the floor."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from recsys.tracking.runs import TAG_LEARNING_FAILED
from tests.pipelines.conftest import DATA, Reference

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DATE = "1998-04-23"
FAILING = ["model=sasrec", "model.lr=0", "model.max_epochs=3", "model.hidden_dim=16", "model.seeds=[1,2]"]


def _train(root: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "recsys"
    return subprocess.run(
        [str(exe), "train", *DATA, f"paths.root={root}", f"run.date={DATE}", *overrides],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_a_model_that_did_not_learn_is_flagged_and_never_promoted(
    tmp_path: Path, reference_run: Reference
) -> None:
    root = tmp_path / "runs"
    for stage in ("ingest", "features"):
        shutil.copytree(reference_run.root / DATE / stage, root / DATE / stage)

    failed = _train(root, *FAILING)
    output = failed.stdout + failed.stderr
    assert failed.returncode == 2, output[-4000:]
    assert "sasrec did not learn" in output and "below mostpop's validation NDCG@10" in output
    assert "This is a bug" not in output
    assert not (root / DATE / "train" / "sasrec").exists()

    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    names = {"train-sasrec-seed1", "train-sasrec-seed2"}
    seeds = [r for r in client.search_runs(experiments) if r.info.run_name in names]
    assert len(seeds) == 2
    for run in seeds:
        assert run.info.status == "FAILED"
        assert "below mostpop's validation NDCG@10" in run.data.tags[TAG_LEARNING_FAILED]
    assert client.search_registered_models() == []

    # A wiring run is not held to the floor: it publishes and registers what its few batches made.
    smoke = _train(root, *FAILING, "trainer=smoke")
    assert smoke.returncode == 0, (smoke.stdout + smoke.stderr)[-4000:]
    assert (root / DATE / "train" / "sasrec" / "manifest.json").is_file()
