"""A real ``kill -9`` of ``recsys pipeline run`` in the middle of the Spark features stage, then a rerun.

The killed stage has no marker and its half-written output exists only as a hidden staging folder; the
rerun removes that folder, skips the stage that had finished (ingest), redoes the rest, and ends with
exactly the outputs of an uninterrupted run (the shared reference run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from pipelines.markers import marker_path, read_marker, started_path
from tests.pipelines.compare import assert_same_tables, candidates, metric_table
from tests.pipelines.conftest import Reference, small_overrides

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.spark]

DATE = "1998-04-23"
TIMEOUT_S = 600
# Seconds to let the features stage write after its staging folder appeared, so the kill lands mid-write.
KILL_AFTER_S = 1.0
POLL_S = 0.05


def _command(root: Path) -> list[str]:
    exe = Path(sys.executable).parent / "recsys"
    return [str(exe), "pipeline", "run", "pipeline=demo", *small_overrides(root)]


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
