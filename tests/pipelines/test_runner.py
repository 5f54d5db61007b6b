"""Idempotence and partial reruns on the shared reference run (in-process, cheap stages only)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.graph import parse_pipeline
from pipelines.markers import markers_dir, read_marker
from pipelines.runner import LOCK_FILE, RAN, SKIPPED, stages_to_redo
from pipelines.stages import STAGES
from recsys.locks import LockTimeoutError
from recsys.manifest import read_manifest
from recsys.tracking.runs import ROOT_PARAMS, git_commit
from tests.pipelines.compare import candidates, metric_table
from tests.pipelines.conftest import Reference, run_in_process, small_overrides

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DATE = "1998-04-23"
ALL = ["ingest", "features", "evaluate_mostpop", "evaluate_ease", "evaluate_puresvd", "index_puresvd_hnsw"]
EVALUATED = ("evaluate_mostpop", "evaluate_ease", "evaluate_puresvd")


def _statuses(run: object) -> dict[str, str]:
    return {r.name: r.status for r in run.results}  # type: ignore[attr-defined]


def test_reference_run_ran_every_stage_and_wrote_the_report(reference_run: Reference) -> None:
    run = reference_run.run
    assert _statuses(run) == dict.fromkeys(ALL, RAN)
    report = run.run_folder / "report"
    markdown = (report / "report.md").read_text()
    for model in ("evaluate_mostpop", "evaluate_ease", "evaluate_puresvd"):
        ndcg = run.results[ALL.index(model)].metrics["test/ndcg_at_10"]
        assert f"| {model.removeprefix('evaluate_')} | {model} | " in markdown and f"{ndcg:.4f}" in markdown
        assert (report / "plots" / f"{model}_at_k.png").stat().st_size > 0
    page = (report / "report.html").read_text()
    assert '<img src="data:image/png;base64,' in page and 'alt="popularity_vs_coverage"' in page


def test_every_stage_that_ran_records_what_it_cost_in_its_marker(reference_run: Reference) -> None:
    folder = reference_run.run.run_folder
    for name in ALL:
        marker = read_marker(folder, name)
        assert marker is not None
        usage = marker.resources
        assert usage["wall_s"] == marker.seconds and usage["cpu_s"] > 0
        assert usage["peak_driver_rss_mb"] > 100 and usage["peak_rss_mb"] >= usage["peak_driver_rss_mb"]
    # Spark's JVM is a worker process of the Spark stages: its memory is counted, not only Python's.
    features = read_marker(folder, "features")
    assert features is not None and features.resources["peak_workers_rss_mb"] > 100
    stages_table = (folder / "report" / "report.md").read_text().split("| stage | kind |")[1]
    assert "CPU s" in stages_table.splitlines()[0] and "peak MiB" in stages_table.splitlines()[0]


def _client(reference_run: Reference) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{reference_run.root.resolve()}/mlflow.db")


def _run_count(client: MlflowClient) -> int:
    experiment = client.get_experiment_by_name("recsys")
    assert experiment is not None
    return len(client.search_runs([experiment.experiment_id], max_results=1000))


def test_stage_runs_are_nested_under_the_pipeline_run(reference_run: Reference) -> None:
    """One MLflow run for the pipeline; every stage's runs are its children, tagged with the snapshot's
    provenance, and log as params only the config groups their stage reads."""
    client = _client(reference_run)
    by_name = {r.name: r for r in reference_run.run.results}
    fingerprint = read_manifest(reference_run.root / DATE / "features" / "split").source_fingerprint
    parents = set()
    for name in EVALUATED:
        run_id = by_name[name].mlflow_run_id
        assert run_id is not None, name
        run = client.get_run(run_id)
        tags = run.data.tags
        parents.add(tags["mlflow.parentRunId"])
        assert tags["run_date"] == DATE and tags["data_fingerprint"] == fingerprint, name
        assert tags["stage_kind"] == "evaluate" and tags["model"] == name.removeprefix("evaluate_"), name
        if git_commit() is not None:
            assert tags["git_commit"] == git_commit()
        params = run.data.params
        assert params["model.name"] == name.removeprefix("evaluate_"), name
        assert not [k for k in params if k.startswith(("spark.", "trainer."))], name
        groups = {k.split(".")[0] for k in params}
        assert groups <= {*STAGES["evaluate"].reads, *ROOT_PARAMS}, (name, groups)
    # The index stage adds the retriever to the evaluate run of the vectors it indexed.
    assert by_name["index_puresvd_hnsw"].mlflow_run_id == by_name["evaluate_puresvd"].mlflow_run_id
    [parent_id] = parents
    parent = client.get_run(parent_id)
    assert parent.info.run_name == "pipeline-demo" and parent.info.status == "FINISHED"
    assert parent.data.tags["stage"] == "pipeline" and parent.data.tags["pipeline"] == "demo"
    # (Opened before the first stage ran: on a new snapshot no data fingerprint is known yet.)
    assert parent.data.tags["run_date"] == DATE
    assert "mlflow.parentRunId" not in parent.data.tags
    # The report went into the same run: every stage's key numbers, no second pipeline run.
    metrics = parent.data.metrics
    assert metrics["pipeline/stages_ran"] == len(ALL)
    for name in EVALUATED:
        expected = by_name[name].metrics["test/ndcg_at_10"]
        assert metrics[f"{name}/test/ndcg_at_10"] == pytest.approx(expected), name


def test_second_run_skips_everything_and_from_stage_redoes_only_downstream(reference_run: Reference) -> None:
    root, folder = reference_run.root, reference_run.root / DATE
    overrides = small_overrides(root)
    before = {s: read_marker(folder, s) for s in ALL}
    report_state = (folder / "report" / "report.json").read_text()
    client = _client(reference_run)
    runs = _run_count(client)

    again = run_in_process(overrides)
    assert _statuses(again) == dict.fromkeys(ALL, SKIPPED)
    assert {s: read_marker(folder, s) for s in ALL} == before
    assert (folder / "report" / "report.json").read_text() == report_state  # nothing ran: report kept
    assert _run_count(client) == runs  # and no pipeline run was opened for nothing
    assert again.seconds < 0.1 * reference_run.run.seconds

    redo = run_in_process(overrides, from_stage="evaluate_puresvd")
    ran = {name for name, status in _statuses(redo).items() if status == RAN}
    assert ran == {"evaluate_puresvd", "index_puresvd_hnsw"}
    puresvd = read_marker(folder, "evaluate_puresvd")
    assert puresvd is not None and before["evaluate_puresvd"] is not None
    assert puresvd.metrics == pytest.approx(before["evaluate_puresvd"].metrics, rel=1e-6)

    # A deleted output is noticed: only its stage runs again, and rebuilds the same candidates.
    expected = candidates(folder / "candidates" / "puresvd")
    shutil.rmtree(folder / "candidates")
    rebuilt = run_in_process(overrides)
    assert {n for n, s in _statuses(rebuilt).items() if s == RAN} == {"index_puresvd_hnsw"}
    assert candidates(folder / "candidates" / "puresvd") == expected


def test_changed_stage_config_reruns_that_stage_only_and_changing_back_restores(
    reference_run: Reference,
) -> None:
    root, folder = reference_run.root, reference_run.root / DATE
    original = metric_table(folder / "evaluate" / "ease")
    changed = small_overrides(
        root, "pipeline.stages.evaluate_ease.overrides=['model=ease','model.params.l2=5.0']"
    )
    run = run_in_process(changed)
    assert {n for n, s in _statuses(run).items() if s == RAN} == {"evaluate_ease"}
    assert [r.reason for r in run.results if r.status == RAN] == ["config changed (model.params.l2)"]
    assert not metric_table(folder / "evaluate" / "ease")["value"].equals(original["value"])

    back = run_in_process(small_overrides(root))
    assert {n for n, s in _statuses(back).items() if s == RAN} == {"evaluate_ease"}
    pd.testing.assert_frame_equal(metric_table(folder / "evaluate" / "ease"), original, rtol=1e-9)


def test_force_and_from_select_the_stages_to_redo() -> None:
    spec = parse_pipeline(
        {
            "name": "t",
            "report": {"split": "test", "k": 10, "ranking_metrics": ["ndcg"]},
            "stages": {
                "ingest": {"kind": "ingest"},
                "features": {"kind": "features", "needs": ["ingest"]},
                "ev": {"kind": "evaluate", "needs": ["features"]},
                "ix": {"kind": "index", "needs": ["ev"]},
                "other": {"kind": "evaluate", "needs": ["ingest"]},
            },
        }
    )
    assert stages_to_redo(spec, force=False, from_stage=None) == set()
    assert stages_to_redo(spec, force=True, from_stage=None) == {"ingest", "features", "ev", "ix", "other"}
    assert stages_to_redo(spec, force=False, from_stage="features") == {"features", "ev", "ix"}


def test_a_second_pipeline_run_on_the_same_folder_refuses_at_once_naming_the_holder(
    reference_run: Reference,
) -> None:
    lock = markers_dir(reference_run.root / DATE) / LOCK_FILE
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from recsys import locks\n"
            f"with locks.exclusive(Path({str(lock)!r}), 'run folder', 'wait'):\n"
            "    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(LockTimeoutError, match=rf"another `recsys pipeline run`.*pid {holder.pid} "):
            run_in_process(small_overrides(reference_run.root))
        assert time.monotonic() - started < 30  # refused, not queued behind the holder
    finally:
        holder.communicate("")
    # Released: the same run goes through (every stage is up to date).
    assert set(_statuses(run_in_process(small_overrides(reference_run.root))).values()) == {SKIPPED}
