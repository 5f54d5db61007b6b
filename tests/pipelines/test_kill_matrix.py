"""SIGKILL at every stage kind, then a rerun: the kill matrix of the scheduler contract.

One pipeline holds a stage of every kind (ingest, features, evaluate, index with its candidates, train for
each model family: DLRM, SASRec, Molar, RecLoRA, rerank) and the report. It is started once per row of
:data:`KILLS` with ``RECSYS_KILL_BEFORE_PUBLISH`` naming that row's unit (:mod:`recsys.faults`): the
command's process group SIGKILLs itself when the unit is completely written into its staging folder and
not yet renamed into place, the moment a scheduler's kill costs most. Each start resumes where the
previous one was killed. After every kill: the unit is not published, its stage has no marker, and the
store holds the killed ``RUNNING`` runs. Then one start without a kill finishes the pipeline: every
staging folder is removed, no run is left ``RUNNING`` (the orphans are ``FAILED``), the data stages equal
the shared uninterrupted reference run's, and the trainings equal the same stages run again uninterrupted.

The other kill test (``test_resume_after_kill.py``) kills at a random point in the middle of writing.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.markers import read_marker, started_path
from recsys.faults import KILL_BEFORE_PUBLISH
from recsys.tracking.registry import CHAMPION
from tests.pipelines.compare import assert_same_tables, candidates, metric_table
from tests.pipelines.conftest import DATA, SPARK, Reference

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.spark]

DATE = "1998-04-23"
TIMEOUT_S = 600
SMOKE = "'trainer=smoke'"
# The demo's stages on the synthetic snapshot, minus those whose kinds appear already (trainings cut to
# a few batches: this is about resuming, not learning).
PIPELINE = [
    "pipeline=demo",
    *DATA,
    *SPARK,
    "~pipeline.stages.evaluate_itemknn",
    "~pipeline.stages.train_ranker",
    "~pipeline.stages.rerank_ranker",
    "~pipeline.stages.index_molar_hnsw",
    f"pipeline.stages.train_dlrm.overrides=['model=dlrm','model.epochs=1',{SMOKE}]",
    f"pipeline.stages.train_sasrec.overrides=['model=sasrec','model.max_epochs=2','model.hidden_dim=32',{SMOKE}]",
    f"pipeline.stages.train_molar.overrides=['model=molar','model.max_epochs=2',{SMOKE}]",
    "pipeline.stages.train_reclora.overrides=['model=reclora','model.retriever_settings=[true]',"
    f"'model.train.eval_max_samples=64','model.train.batch_size=32',{SMOKE}]",
]
# (unit killed just before it is published, the stage publishing it), in the pipeline's order.
KILLS = (
    ("ingest", "ingest"),
    ("features", "features"),
    ("evaluate/mostpop", "evaluate_mostpop"),
    ("index/puresvd-hnsw", "index_puresvd_hnsw"),
    ("candidates/puresvd", "index_puresvd_hnsw"),
    ("train/dlrm", "train_dlrm"),
    ("rerank/dlrm-puresvd", "rerank_dlrm"),
    ("train/sasrec", "train_sasrec"),
    ("train/molar", "train_molar"),
    ("train/reclora", "train_reclora"),
    ("report", None),
)
TRAININGS = ("train_dlrm", "rerank_dlrm", "train_sasrec", "train_molar", "train_reclora")


def _pipeline(root: Path, log: Path, kill: str | None = None, *extra: str) -> int:
    exe = Path(sys.executable).parent / "recsys"
    env = {**os.environ, "COLUMNS": "200"}
    env.pop(KILL_BEFORE_PUBLISH, None)
    if kill is not None:
        env[KILL_BEFORE_PUBLISH] = kill
    with log.open("w") as out:
        # A session of its own: the fault kills the command's whole process group, never pytest.
        process = subprocess.Popen(
            [str(exe), "pipeline", "run", *PIPELINE, f"paths.root={root}", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            return process.wait(timeout=TIMEOUT_S)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)


def _run_statuses(root: Path) -> dict[str, list[str]]:
    """Run names by MLflow status in the root's SQLite store; runs closed as orphans get ``killed``."""
    with sqlite3.connect(f"file:{root / 'mlflow.db'}?mode=ro", uri=True, timeout=30) as connection:
        rows = connection.execute(
            "SELECT r.status, r.name || CASE WHEN t.key IS NULL THEN '' ELSE ' (killed)' END FROM runs r "
            "LEFT JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'killed'"
        ).fetchall()
    statuses: dict[str, list[str]] = {}
    for status, name in rows:
        statuses.setdefault(status, []).append(name)
    return statuses


def _key_metrics(run_folder: Path, stage: str) -> dict[str, float]:
    """A stage's marker metrics, less its timings (wall clock differs between runs)."""
    marker = read_marker(run_folder, stage)
    assert marker is not None, stage
    return {k: v for k, v in marker.metrics.items() if "seconds" not in k and not math.isnan(v)}


def test_sigkill_before_each_stage_kind_publishes_then_rerun_completes_like_an_uninterrupted_run(
    tmp_path: Path, reference_run: Reference
) -> None:
    root = tmp_path / "runs"
    run_folder = root / DATE
    for attempt, (unit, stage) in enumerate(KILLS):
        log = tmp_path / f"killed-{attempt:02d}.log"
        returncode = _pipeline(root, log, kill=unit)
        assert returncode == -signal.SIGKILL, f"{unit}: exit {returncode}\n{log.read_text()[-3000:]}"
        # Written completely, yet not visible: no published unit, no marker, only a hidden staging folder.
        published = run_folder / unit
        assert not published.exists(), unit
        assert list(published.parent.glob(f".{published.name}.tmp-*")), unit
        if stage is not None:
            assert read_marker(run_folder, stage) is None, stage
            assert started_path(run_folder, stage).is_file(), stage
        assert _run_statuses(root).get("RUNNING"), f"{unit}: the killed runs are not in the store"

    log = tmp_path / "resumed.log"
    assert _pipeline(root, log) == 0, log.read_text()[-4000:]
    assert "removed staging folder of an interrupted run" in log.read_text()
    assert not [p for p in run_folder.rglob(".*.tmp-*")], "a staging folder was left behind"
    statuses = _run_statuses(root)
    assert "RUNNING" not in statuses, statuses
    killed = [name for names in statuses.values() for name in names if name.endswith("(killed)")]
    assert len(killed) >= len(KILLS), statuses  # at least each killed start's pipeline run
    assert set(killed) <= set(statuses["FAILED"])
    assert (run_folder / "report" / "report.html").is_file()
    # A model registered by a run killed before its stage finished is champion no longer.
    client = MlflowClient(f"sqlite:///{root / 'mlflow.db'}")
    models = client.search_registered_models()
    assert {m.name for m in models} >= {"recsys-dlrm", "recsys-sequential", "recsys-reclora"}
    for model in models:
        champion = client.get_model_version_by_alias(model.name, CHAMPION)
        assert champion.run_id is not None
        assert client.get_run(champion.run_id).info.status == "FINISHED", model.name

    # The data stages equal the uninterrupted reference run's (same data, Spark and stage configs).
    reference = reference_run.root / DATE
    for stage in ("ingest", "features"):
        assert_same_tables(run_folder / stage, reference / stage)
    for model in ("mostpop", "ease", "puresvd"):
        pd.testing.assert_frame_equal(
            metric_table(run_folder / "evaluate" / model), metric_table(reference / "evaluate" / model)
        )
    assert candidates(run_folder / "candidates" / "puresvd") == candidates(
        reference / "candidates" / "puresvd"
    )

    # The trainings and the rerank equal the same stages run again, uninterrupted, on the same inputs.
    resumed = {stage: _key_metrics(run_folder, stage) for stage in TRAININGS}
    log = tmp_path / "uninterrupted.log"
    assert _pipeline(root, log, None, "--from", TRAININGS[0]) == 0, log.read_text()[-4000:]
    for stage in TRAININGS:
        assert _key_metrics(run_folder, stage) == pytest.approx(resumed[stage], rel=1e-6, abs=1e-9), stage
