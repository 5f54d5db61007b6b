"""Idempotence and partial reruns on the shared reference run (in-process, cheap stages only)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from pipelines.graph import parse_pipeline
from pipelines.markers import read_marker
from pipelines.runner import RAN, SKIPPED, stages_to_redo
from tests.pipelines.compare import candidates, metric_table
from tests.pipelines.conftest import Reference, run_in_process, small_overrides

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DATE = "1998-04-23"
ALL = ["ingest", "features", "evaluate_mostpop", "evaluate_ease", "evaluate_puresvd", "index_puresvd_hnsw"]


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
    assert "popularity_vs_coverage.png" in (report / "report.html").read_text()


def test_second_run_skips_everything_and_from_stage_redoes_only_downstream(reference_run: Reference) -> None:
    root, folder = reference_run.root, reference_run.root / DATE
    overrides = small_overrides(root)
    before = {s: read_marker(folder, s) for s in ALL}
    report_state = (folder / "report" / "report.json").read_text()

    again = run_in_process(overrides)
    assert _statuses(again) == dict.fromkeys(ALL, SKIPPED)
    assert {s: read_marker(folder, s) for s in ALL} == before
    assert (folder / "report" / "report.json").read_text() == report_state  # nothing ran: report kept
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
