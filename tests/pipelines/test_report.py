"""The report: metric names MLflow accepts, and the report logged into the pipeline's own MLflow run."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipelines.graph import ReportSettings
from pipelines.report import StageRow, report_is_current, write_report
from recsys.config import compose, to_plain
from recsys.manifest import Manifest, write_manifest
from recsys.serving import LOOPBACK, free_port
from recsys.tracking.keys import mlflow_key
from recsys.tracking.runs import configure, end_pipeline_run, start_pipeline_run

RAW = "train_reclora/personalized+retriever/test/auc_mean"
ARM_METRIC = "personalized+retriever/test/auc_mean"


def test_mlflow_key_makes_a_rejected_metric_name_loggable(tmp_path: Path) -> None:
    configure(
        {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment": "t",
            "artifact_root": str(tmp_path),
        }
    )
    with mlflow.start_run() as run:
        with pytest.raises(MlflowException):
            mlflow.log_metric(RAW, 0.6)
        mlflow.log_metric(mlflow_key(RAW), 0.6)
    logged = mlflow.get_run(run.info.run_id).data.metrics
    assert logged == {"train_reclora/personalized_retriever/test/auc_mean": 0.6}


def test_report_is_logged_into_the_pipeline_run(tmp_path: Path) -> None:
    """No stage published a metric table here (no plots): the tables and the key numbers are what counts."""
    cfg = to_plain(compose([f"paths.root={tmp_path / 'runs'}", "run.date=2026-01-02"]))
    run_folder = tmp_path / "runs" / "2026-01-02"
    run_folder.mkdir(parents=True)
    settings = ReportSettings(split="test", k=10, ranking_metrics=("ndcg", "recall"))
    rows = [
        StageRow("features", "features", "skipped", 0.0, "up to date", "split.rows", {"split.rows": 2000.0}),
        StageRow(
            "evaluate_ease",
            "evaluate",
            "ran",
            1.5,
            "not done yet",
            "test/ndcg_at_10",
            {"test/ndcg_at_10": 0.25, "test/recall_at_10": 0.5},
            model="ease",
        ),
        StageRow("train_reclora", "train", "ran", 3.0, "not done yet", None, {ARM_METRIC: 0.6}),
        StageRow(
            "train_dlrm",
            "train",
            "ran",
            2.0,
            "not done yet",
            "test/auc",
            {"test/auc": 0.75, "val/auc": 0.74, "valid/auc": 0.74, "test/gauc": float("nan")},
            model="dlrm",
        ),
    ]
    pipeline_run = start_pipeline_run(cfg, "t")
    folder = write_report(run_folder, "t", "2026-01-02", rows, settings, cfg, "digest-1", pipeline_run)
    end_pipeline_run(cfg, pipeline_run, failed=False)

    assert folder == run_folder / "report"
    markdown = (folder / "report.md").read_text()
    assert "| ease | evaluate_ease | 0.2500 | 0.5000 |" in markdown
    # Other stages: one metric-by-split table each, one spelling of the validation split.
    assert "## train_reclora\n\n| metric | test |" in markdown
    assert "| personalized+retriever/auc_mean | 0.6000 |" in markdown
    assert "## train_dlrm (dlrm)\n\n| metric | val | test |" in markdown
    assert "| auc | 0.7400 | 0.7500 |" in markdown and "valid" not in markdown
    # An undefined metric is shown as n/a with its reason under the table.
    assert "| gauc |  | n/a |" in markdown
    assert "- n/a: gauc: GAUC averages per-user AUCs" in markdown
    # Provenance first: the commit, the config hash, the data fingerprint, the run date.
    page = (folder / "report.html").read_text()
    assert page.index("<h2>Provenance</h2>") < page.index("<h2>Stages</h2>")
    for label in ("git commit", "config hash", "data fingerprint", "run date"):
        assert f"<td>{label}</td>" in page
    state = json.loads((folder / "report.json").read_text())
    assert state["mlflow_run_id"] == pipeline_run and state["stages_digest"] == "digest-1"
    assert report_is_current(run_folder, "digest-1") and not report_is_current(run_folder, "digest-2")

    client = MlflowClient(tracking_uri=str(cfg["tracking"]["tracking_uri"]))
    run = client.get_run(pipeline_run)
    assert run.info.run_name == "pipeline-t" and run.info.status == "FINISHED"
    assert run.data.tags["stage"] == "pipeline" and run.data.tags["run_date"] == "2026-01-02"
    logged = {k: v for k, v in run.data.metrics.items() if not k.startswith("train_dlrm/")}
    assert logged == {
        "features/split.rows": 2000.0,
        "evaluate_ease/test/ndcg_at_10": 0.25,
        "evaluate_ease/test/recall_at_10": 0.5,
        mlflow_key(RAW): 0.6,  # the stage's name / its key, made loggable
        "pipeline/stages_ran": 3.0,
    }
    artifacts = {a.path for a in client.list_artifacts(pipeline_run, "report")}
    assert {"report/report.md", "report/report.html", "report/report.json"} <= artifacts
    # One run for the whole pipeline: the report did not open another one.
    experiment = client.get_experiment_by_name(str(cfg["tracking"]["experiment"]))
    assert experiment is not None
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [pipeline_run]


def _metric_table(folder: Path, table: pd.DataFrame) -> None:
    """A published ``metrics`` output (one Parquet file and its manifest), as the stages write it."""
    arrow = pa.Table.from_pandas(table, preserve_index=False)
    folder.mkdir(parents=True)
    pq.write_table(arrow, folder / "part-0.parquet")
    schema = [{"name": f.name, "type": str(f.type)} for f in arrow.schema]
    write_manifest(folder, Manifest("metrics", arrow.num_rows, schema, {}, "", ""))
    write_manifest(folder.parent, Manifest(folder.parent.name, arrow.num_rows, [], {}, "", ""))


def _ranking(values: dict[int, float]) -> pd.DataFrame:
    rows = [
        (m, k, "all", v * (1.0 if m == "ndcg" else 0.5))
        for m in ("ndcg", "recall")
        for k, v in values.items()
    ]
    return pd.DataFrame(rows, columns=["metric", "k", "bucket", "value"])


def _report_with_plots(tmp_path: Path) -> tuple[dict[str, Any], Path, str]:
    """A demo-like report: a baseline's metric table and the rerank stage's (config, folder, MLflow run)."""
    cfg = to_plain(compose([f"paths.root={tmp_path / 'runs'}", "run.date=2026-01-02"]))
    run_folder = tmp_path / "runs" / "2026-01-02"
    evaluated = pd.concat(
        [_ranking({5: 0.2, 10: 0.25}).assign(split=s) for s in ("valid", "test")], ignore_index=True
    )
    _metric_table(run_folder / "evaluate" / "puresvd" / "metrics", evaluated)
    reranked = pd.concat(
        [
            _ranking({5: 0.2, 10: 0.25}).assign(order="retrieval"),
            _ranking({5: 0.3, 10: 0.35}).assign(order="reranked"),
        ],
        ignore_index=True,
    )
    _metric_table(run_folder / "rerank" / "dlrm-puresvd" / "metrics", reranked)
    two_stage = {
        "two_stage/retrieval_ndcg_at_10": 0.25,
        "two_stage/reranked_ndcg_at_10": 0.35,
        "two_stage/candidate_recall": 0.6,
    }
    rows = [
        StageRow(
            "evaluate_puresvd",
            "evaluate",
            "ran",
            1.0,
            "not done yet",
            "test/ndcg_at_10",
            {"test/ndcg_at_10": 0.25, "test/recall_at_10": 0.125},
            outputs=("evaluate/puresvd",),
            model="puresvd",
        ),
        StageRow(
            "rerank_dlrm",
            "rerank",
            "ran",
            2.0,
            "not done yet",
            "two_stage/reranked_ndcg_at_10",
            two_stage,
            outputs=("rerank/dlrm-puresvd",),
            model="dlrm",
        ),
    ]
    settings = ReportSettings(split="test", k=10, ranking_metrics=("ndcg", "recall"))
    pipeline_run = start_pipeline_run(cfg, "demo")
    folder = write_report(run_folder, "demo", "2026-01-02", rows, settings, cfg, "d", pipeline_run)
    end_pipeline_run(cfg, pipeline_run, failed=False)

    return cfg, folder, pipeline_run


def test_report_of_a_pipeline_with_a_rerank_stage(tmp_path: Path) -> None:
    """The demo's `rerank_dlrm` publishes `rerank/dlrm-puresvd/metrics`: both orders' tables (column
    `order`, no `split`: the two-stage protocol evaluates the test split only) next to the baselines'."""
    cfg, folder, pipeline_run = _report_with_plots(tmp_path)
    markdown = (folder / "report.md").read_text()
    assert "| puresvd | evaluate_puresvd | 0.2500 | 0.1250 |" in markdown
    # the two-stage section puts retrieval-only, re-ranked and the ceiling side by side, with the gain
    assert "## Two-stage: retrieval vs re-ranked" in markdown
    assert "| rerank_dlrm | 0.2500 | 0.3500 |  |  | 0.6000 | 1.400x |" in markdown
    assert "| rerank_dlrm | two_stage/" not in markdown  # not repeated among the other stages
    assert (folder / "plots" / "evaluate_puresvd_at_k.png").stat().st_size > 0
    assert (folder / "plots" / "two_stage.png").stat().st_size > 0
    assert (folder / "plots" / "models_ndcg_at_k.png").stat().st_size > 0  # every model on one chart
    # Self-contained: every plot inline, nothing to resolve beside the file.
    page = (folder / "report.html").read_text()
    plots = sorted((folder / "plots").glob("*.png"))
    assert page.count('src="data:image/png;base64,') == len(plots) >= 4
    assert 'src="plots/' not in page
    logged = (
        MlflowClient(tracking_uri=str(cfg["tracking"]["tracking_uri"])).get_run(pipeline_run).data.metrics
    )
    assert logged["rerank_dlrm/two_stage/reranked_ndcg_at_10"] == 0.35


def test_report_renders_from_mlflow_artifact_view(tmp_path: Path) -> None:
    """Fetched the way MLflow's UI shows an artifact (a tracking server's /get-artifact over HTTP), the
    report is the same page with every plot inline: nothing relative left to break."""
    cfg, folder, pipeline_run = _report_with_plots(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            str(cfg["tracking"]["tracking_uri"]),
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://{LOOPBACK}:{port}/get-artifact?" + urllib.parse.urlencode(
            {"path": "report/report.html", "run_uuid": pipeline_run}
        )
        page = _get_when_up(url, server)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert page == (folder / "report.html").read_text()
    assert page.count('src="data:image/png;base64,') == len(list((folder / "plots").glob("*.png")))
    # The inline images are real PNGs.
    first = page.split('src="data:image/png;base64,', 1)[1].split('"', 1)[0]
    assert base64.b64decode(first).startswith(b"\x89PNG")


def _get_when_up(url: str, server: subprocess.Popen[bytes], timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return str(reply.read().decode())
        except OSError:
            assert server.poll() is None, "mlflow server exited"
            assert time.monotonic() < deadline, f"mlflow server did not answer {url}"
            time.sleep(1.0)
