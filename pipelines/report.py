"""End-of-run report: a terminal table, ``report.md`` + ``report.html`` with plots, logged to the pipeline's
MLflow run.

The report is built from the success markers (every stage's key numbers) and the evaluate stages'
published metric tables (for the plots), so a rerun that skipped every stage reports the same numbers as
the run that computed them. It is published atomically under ``<root>/<date>/report/``.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.graph import ReportSettings
from recsys.console import print_table
from recsys.tracking.keys import metric_key, mlflow_key

REPORT_DIR = "report"
PLOTS_DIR = "plots"
STATE_FILE = "report.json"


@dataclass
class StageRow:
    """One row of the summary: what happened to a stage in this run."""

    name: str
    kind: str
    status: str
    seconds: float
    reason: str
    metric: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None
    outputs: tuple[str, ...] = ()
    model: str | None = None

    @property
    def label(self) -> str:
        return self.model or self.name

    def key_metric(self) -> str:
        if self.metric is None or self.metric not in self.metrics:
            return ""
        return f"{self.metric} = {_number(self.metrics[self.metric])}"


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4f}"


def print_summary(pipeline: str, date: str, results: Sequence[StageRow], total_seconds: float) -> None:
    rows = [(r.name, r.kind, r.status, f"{r.seconds:.1f}", r.key_metric(), r.reason) for r in results]
    print_table(
        f"pipeline {pipeline} @ {date}: {total_seconds:.1f}s",
        ["stage", "kind", "status", "seconds", "key metric", "why"],
        rows,
    )


def _model_rows(results: Sequence[StageRow], settings: ReportSettings) -> tuple[list[str], list[list[str]]]:
    keys = [metric_key(settings.split, m, settings.k) for m in settings.ranking_metrics]
    header = ["model", "stage", *[f"{m}@{settings.k}" for m in settings.ranking_metrics]]
    rows = []
    for r in results:
        # Baselines (evaluate) and trainers that report ranking metrics (sequential models) alike.
        if any(k in r.metrics for k in keys):
            rows.append([r.label, r.name, *[_number(r.metrics[k]) if k in r.metrics else "" for k in keys]])
    return header, rows


TWO_STAGE_PREFIX = "two_stage/"
TWO_STAGE_COLUMNS = (
    ("retrieval NDCG@10", "two_stage/retrieval_ndcg_at_10"),
    ("re-ranked NDCG@10", "two_stage/reranked_ndcg_at_10"),
    ("retrieval recall@10", "two_stage/retrieval_recall_at_10"),
    ("re-ranked recall@10", "two_stage/reranked_recall_at_10"),
    ("candidate recall@K (ceiling)", "two_stage/candidate_recall"),
)


def _two_stage(results: Sequence[StageRow]) -> list[StageRow]:
    return [r for r in results if any(k.startswith(TWO_STAGE_PREFIX) for k in r.metrics)]


def _two_stage_rows(results: Sequence[StageRow]) -> tuple[list[str], list[list[str]]]:
    """Retrieval-only vs re-ranked metrics of every two-stage stage, with the re-ranking gain."""
    header = ["stage", *(label for label, _ in TWO_STAGE_COLUMNS), "NDCG gain"]
    rows = []
    for r in _two_stage(results):
        cells = [_number(r.metrics[key]) if key in r.metrics else "" for _, key in TWO_STAGE_COLUMNS]
        before = r.metrics.get("two_stage/retrieval_ndcg_at_10", 0.0)
        after = r.metrics.get("two_stage/reranked_ndcg_at_10", float("nan"))
        gain = f"{after / before:.3f}x" if before else ""
        rows.append([r.name, *cells, gain])
    return header, rows


def _other_rows(results: Sequence[StageRow]) -> list[list[str]]:
    rows = []
    for r in results:
        if r.kind != "evaluate" and not r.metrics.keys() & {k for _, k in TWO_STAGE_COLUMNS}:
            for key, value in sorted(r.metrics.items()):
                if "/bucket_" not in key:  # per-activity-bucket values stay in MLflow
                    rows.append([r.name, key, _number(value)])
    return rows


def _plots(run_folder: Path, results: Sequence[StageRow], settings: ReportSettings, out: Path) -> list[Path]:
    """metric@K curves per evaluated model and popularity vs coverage across them (PNG)."""
    from recsys.tables import read_arrow
    from recsys.tracking.plots import metric_at_k_curves, popularity_vs_coverage, two_stage_bars

    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    tables = {}
    for r in results:
        # Any stage that published an evaluation folder (``<output>/metrics`` with a manifest).
        folders = [run_folder / out / "metrics" for out in r.outputs]
        folder = next((f for f in folders if (f / "manifest.json").is_file()), None)
        if folder is None:
            continue
        table = read_arrow(folder).to_pandas()
        if "split" not in table.columns:  # e.g. rerank's two orders of one split: not a model's curve
            continue
        table = table[table["split"] == settings.split]
        tables[r.label] = table
        paths.append(metric_at_k_curves(table, f"{r.label} ({settings.split})", out / f"{r.name}_at_k.png"))
    if tables:
        paths.append(popularity_vs_coverage(tables, settings.k, out / "popularity_vs_coverage.png"))
    two_stage = {r.name: r.metrics for r in _two_stage(results)}
    if two_stage:
        paths.append(two_stage_bars(two_stage, out / "two_stage.png"))
    return paths


def _markdown(
    title: str, sections: Sequence[tuple[str, list[str], list[list[str]]]], plots: list[Path]
) -> str:
    lines = [f"# {title}", ""]
    for heading, header, rows in sections:
        if not rows:
            continue
        lines += [f"## {heading}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        lines.append("")
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({PLOTS_DIR}/{p.name})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def _html(title: str, sections: Sequence[tuple[str, list[str], list[list[str]]]], plots: list[Path]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html>",
        f'<html><head><meta charset="utf-8"><title>{esc(title)}</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:1.5em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}"
        "img{max-width:640px;margin:0 1em 1em 0}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    for heading, header, rows in sections:
        if not rows:
            continue
        parts.append(f"<h2>{esc(heading)}</h2><table><tr>")
        parts += [f"<th>{esc(h)}</th>" for h in header]
        parts.append("</tr>")
        for row in rows:
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<img src="{PLOTS_DIR}/{esc(p.name)}" alt="{esc(p.stem)}">' for p in plots]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def report_is_current(run_folder: Path, digest: str) -> bool:
    """True when ``report/`` was written for exactly these stage markers (nothing to redo)."""
    state = run_folder / REPORT_DIR / STATE_FILE
    if not state.is_file():
        return False
    try:
        return bool(json.loads(state.read_text()).get("stages_digest") == digest)
    except json.JSONDecodeError:
        return False


def write_report(
    run_folder: Path,
    pipeline: str,
    date: str,
    results: Sequence[StageRow],
    settings: ReportSettings,
    cfg: Mapping[str, Any],
    digest: str,
    pipeline_run_id: str,
) -> Path:
    """Publish ``report/`` (md, html, plots) and log it into the pipeline's MLflow run.

    Returns:
        The report folder.
    """
    from recsys.manifest import publish_atomically
    from recsys.tracking.runs import log_artifacts, log_metrics, resume_run

    title = f"Pipeline {pipeline} @ {date}"
    header, model_rows = _model_rows(results, settings)
    stage_rows = [
        [r.name, r.kind, r.status, f"{r.seconds:.1f}", r.key_metric(), r.mlflow_run_id or ""] for r in results
    ]
    sections = [
        ("Stages", ["stage", "kind", "status", "seconds", "key metric", "MLflow run"], stage_rows),
        (f"Ranking models ({settings.split}, full ranking)", header, model_rows),
        ("Two-stage: retrieval vs re-ranked (test, full catalog)", *_two_stage_rows(results)),
        ("Other stages", ["stage", "metric", "value"], _other_rows(results)),
    ]
    final = run_folder / REPORT_DIR
    with (
        resume_run(cfg["tracking"], pipeline_run_id) as run,
        publish_atomically(final) as staging,
    ):
        plots = _plots(run_folder, results, settings, staging / PLOTS_DIR)
        (staging / "report.md").write_text(_markdown(title, sections, plots))
        (staging / "report.html").write_text(_html(title, sections, plots))
        state = {
            "pipeline": pipeline,
            "date": date,
            "stages_digest": digest,
            "mlflow_run_id": run.info.run_id,
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        metrics = {mlflow_key(f"{r.name}/{k}"): v for r in results for k, v in r.metrics.items()}
        metrics["pipeline/stages_ran"] = float(sum(r.status == "ran" for r in results))
        log_metrics(metrics)
        log_artifacts(staging, REPORT_DIR)
    return final
