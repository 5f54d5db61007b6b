"""A real ``kill -9`` of ``recsys pipeline run`` in the middle of a stage, then a rerun.

The killed stage has no marker and its half-written output exists only as a hidden staging folder; the
rerun removes that folder, skips the stages that had finished, redoes the rest, and ends with the outputs
of an uninterrupted run: once in the middle of the Spark features stage (compared with the shared
reference run), once in the middle of model training (compared with an uninterrupted training of the same
stage on the same features).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from pipelines.markers import marker_path, read_marker, started_path
from pipelines.runner import SKIPPED
from tests.pipelines.compare import assert_same_tables, candidates, metric_table
from tests.pipelines.conftest import Reference, run_in_process, small_overrides

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.spark]

DATE = "1998-04-23"
TIMEOUT_S = 600
# Seconds to let the features stage write after its staging folder appeared, so the kill lands mid-write.
KILL_AFTER_S = 1.0
POLL_S = 0.05


def _command(root: Path, *extra: str) -> list[str]:
    exe = Path(sys.executable).parent / "recsys"
    return [str(exe), "pipeline", "run", "pipeline=demo", *small_overrides(root), *extra]


def _env() -> dict[str, str]:
    # A wide console keeps rich's summary table readable in the captured logs.
    return {**os.environ, "COLUMNS": "200"}


def _staging(run_folder: Path) -> list[Path]:
    return sorted(run_folder.glob(".features.tmp-*"))


def test_kill_9_during_features_then_rerun_resumes_and_matches_uninterrupted_run(
    tmp_path: Path, reference_run: Reference
) -> None:
    root = tmp_path / "runs"
    run_folder = root / DATE
    log = (tmp_path / "killed.log").open("w")
    process = subprocess.Popen(
        _command(root), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not (started_path(run_folder, "features").is_file() and _staging(run_folder)):
            assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "features stage never started writing"
            time.sleep(POLL_S)
        time.sleep(KILL_AFTER_S)
    finally:
        # The whole process group: the Python driver, its Spark JVM and the Python workers.
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        log.close()
    killed_at = time.time()
    assert process.returncode == -signal.SIGKILL

    # Killed mid-stage: ingest finished, features did not, and its partial output is not visible.
    ingest_marker = marker_path(run_folder, "ingest").read_bytes()
    assert read_marker(run_folder, "features") is None
    assert started_path(run_folder, "features").is_file()
    assert not (run_folder / "features").exists()
    stale = _staging(run_folder)
    assert stale

    done = subprocess.run(
        _command(root), cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert "removed staging folder of an interrupted run" in done.stderr
    assert not any(p.exists() for p in stale)
    # Ingest was skipped (its marker untouched); features and everything after it ran again.
    assert marker_path(run_folder, "ingest").read_bytes() == ingest_marker
    for stage in ("features", "evaluate_mostpop", "evaluate_ease", "evaluate_puresvd", "index_puresvd_hnsw"):
        marker = read_marker(run_folder, stage)
        assert marker is not None, stage
        assert pd.Timestamp(marker.started_at).timestamp() > killed_at - 1, stage
    assert not list((run_folder / "_markers").glob("*.started.json"))

    # Same results as the uninterrupted run, output by output.
    reference = reference_run.root / DATE
    for stage in ("ingest", "features"):
        assert_same_tables(run_folder / stage, reference / stage)
    for model in ("mostpop", "ease", "puresvd"):
        pd.testing.assert_frame_equal(
            metric_table(run_folder / "evaluate" / model),
            metric_table(reference / "evaluate" / model),
            rtol=1e-6,
        )
    assert candidates(run_folder / "candidates" / "puresvd") == candidates(
        reference / "candidates" / "puresvd"
    )
    report = json.loads((run_folder / "report" / "report.json").read_text())
    assert report["pipeline"] == "demo" and report["date"] == DATE


# A SASRec stage on top of the reference run's features. No early stopping, so training lasts every epoch
# and the kill lands between two of them, not after the model was published. No learning floor: in 40
# epochs on this tiny snapshot SASRec stays below MostPop, and this test is about resuming, not learning.
TRAIN_STAGE = "train_sasrec_kill"
TRAIN_EPOCHS = 40
TRAIN_STAGE_SPEC = (
    f"+pipeline.stages.{TRAIN_STAGE}={{kind: train, "
    f"overrides: ['model=sasrec', 'model.max_epochs={TRAIN_EPOCHS}', 'model.patience={TRAIN_EPOCHS}', "
    "'model.hidden_dim=32', 'trainer.learning_floor=false'], needs: [features], metric: test/ndcg_at_10}"
)
# Epochs the killed run must have finished (their losses are in MLflow) before the kill.
KILL_AFTER_EPOCHS = 3
EPOCH_METRIC = "train/loss_epoch"


def _logged_epochs(root: Path) -> int:
    """Training epochs logged so far to the run folder's MLflow store (any run)."""
    database = root / "mlflow.db"
    if not database.is_file():
        return 0
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
        try:
            (count,) = connection.execute(
                "SELECT COUNT(*) FROM metrics WHERE key = ?", (EPOCH_METRIC,)
            ).fetchone()
        except sqlite3.OperationalError:  # the store is being created or migrated
            return 0
    return int(count)


@pytest.fixture
def reference_with_training(reference_run: Reference) -> Iterator[Reference]:
    """The shared reference run, plus a training stage for one test; afterwards the shared stages run once
    more (all skipped), so the report covers exactly them again, as the other pipeline tests expect."""
    yield reference_run
    restored = run_in_process(small_overrides(reference_run.root))
    assert {r.status for r in restored.results} == {SKIPPED}


def test_kill_9_during_training_then_rerun_matches_uninterrupted_training(
    tmp_path: Path, reference_with_training: Reference
) -> None:
    root = reference_with_training.root
    run_folder = root / DATE
    before = _logged_epochs(root)
    log_path = tmp_path / "killed.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            _command(root, TRAIN_STAGE_SPEC),
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + TIMEOUT_S
            while _logged_epochs(root) - before < KILL_AFTER_EPOCHS:
                assert process.poll() is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, "training never logged an epoch"
                time.sleep(POLL_S)
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == -signal.SIGKILL
    trained = _logged_epochs(root) - before
    assert KILL_AFTER_EPOCHS <= trained < TRAIN_EPOCHS, f"killed after {trained} epochs"
    # Killed mid-training: no marker, nothing published under train/sasrec.
    assert read_marker(run_folder, TRAIN_STAGE) is None
    assert started_path(run_folder, TRAIN_STAGE).is_file()
    assert not (run_folder / "train" / "sasrec").exists()

    resumed = subprocess.run(
        _command(root, TRAIN_STAGE_SPEC),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=TIMEOUT_S,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    # The killed process's MLflow runs (its pipeline run and the training's) were closed as FAILED.
    with sqlite3.connect(f"file:{root / 'mlflow.db'}?mode=ro", uri=True) as connection:
        statuses = {s for (s,) in connection.execute("SELECT DISTINCT status FROM runs")}
        closed = connection.execute(
            "SELECT r.name, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
            "WHERE t.key = 'killed'"
        ).fetchall()
    assert "RUNNING" not in statuses
    assert {status for _, status in closed} == {"FAILED"}
    assert {name for name, _ in closed} >= {"pipeline-demo", "train-sasrec-seed42"}
    marker = read_marker(run_folder, TRAIN_STAGE)
    assert marker is not None
    assert not started_path(run_folder, TRAIN_STAGE).is_file()
    resumed_metrics = metric_table(run_folder / "train" / "sasrec")
    resumed_vectors = (run_folder / "train" / "sasrec" / "item_vectors.npy").read_bytes()

    # The same stage again, uninterrupted, on the same features.
    uninterrupted = subprocess.run(
        _command(root, TRAIN_STAGE_SPEC, "--from", TRAIN_STAGE),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=_env(),
        timeout=TIMEOUT_S,
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-4000:]
    again = read_marker(run_folder, TRAIN_STAGE)
    assert again is not None and again.mlflow_run_id != marker.mlflow_run_id
    # Seeded training on the same data and threads: the killed-then-resumed run equals the clean one.
    pd.testing.assert_frame_equal(
        resumed_metrics, metric_table(run_folder / "train" / "sasrec"), rtol=1e-6, atol=1e-9
    )
    assert resumed_vectors == (run_folder / "train" / "sasrec" / "item_vectors.npy").read_bytes()
    assert marker.metrics["test/ndcg_at_10"] == pytest.approx(again.metrics["test/ndcg_at_10"], rel=1e-6)
