"""End-of-run report: a terminal table, ``report.md`` + ``report.html`` with plots, one MLflow run.

The report is built from the success markers (every stage's key numbers) and the evaluate stages'
published metric tables (for the plots), so a rerun that skipped every stage reports the same numbers as
the run that computed them. It is published atomically under ``<root>/<date>/report/``.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.console import print_table

REPORT_DIR = "report"
PLOTS_DIR = "plots"
STATE_FILE = "report.json"
# MLflow accepts at most 1000 metrics per batch call.
_METRIC_BATCH = 500


@dataclass
class StageResult:
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


@dataclass(frozen=True)
class ReportSettings:
    """``pipeline.report``: which split, cut-off and metrics the model table shows."""

    split: str
    k: int
    ranking_metrics: tuple[str, ...]

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> ReportSettings:
        return cls(str(cfg["split"]), int(cfg["k"]), tuple(str(m) for m in cfg["ranking_metrics"]))


_MLFLOW_KEY_INVALID = re.compile(r"[^A-Za-z0-9_\-. /:]")
"""Characters MLflow refuses in metric names (e.g. the '+' of RecLoRA's ``personalized+retriever``)."""


def mlflow_key(name: str) -> str:
    """``name`` with every character MLflow rejects in a metric key replaced by ``_``."""
    return _MLFLOW_KEY_INVALID.sub("_", name)


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4f}"


def print_summary(pipeline: str, date: str, results: Sequence[StageResult], total_seconds: float) -> None:
    rows = [(r.name, r.kind, r.status, f"{r.seconds:.1f}", r.key_metric(), r.reason) for r in results]
    print_table(
        f"pipeline {pipeline} @ {date}: {total_seconds:.1f}s",
        ["stage", "kind", "status", "seconds", "key metric", "why"],
        rows,
    )


def _model_rows(
    results: Sequence[StageResult], settings: ReportSettings
) -> tuple[list[str], list[list[str]]]:
    from recsys.evaluation import metric_key

    keys = [metric_key(settings.split, m, settings.k) for m in settings.ranking_metrics]
    header = ["model", "stage", *[f"{m}@{settings.k}" for m in settings.ranking_metrics]]
    rows = []
    for r in results:
        # Baselines (evaluate) and trainers that report ranking metrics (sequential models) alike.
        if any(k in r.metrics for k in keys):
            rows.append([r.label, r.name, *[_number(r.metrics[k]) if k in r.metrics else "" for k in keys]])
    return header, rows


def _other_rows(results: Sequence[StageResult]) -> list[list[str]]:
    rows = []
    for r in results:
        if r.kind != "evaluate":
            for key, value in sorted(r.metrics.items()):
                if "/bucket_" not in key:  # per-activity-bucket values stay in MLflow
                    rows.append([r.name, key, _number(value)])
    return rows


def _plots(
    run_folder: Path, results: Sequence[StageResult], settings: ReportSettings, out: Path
) -> list[Path]:
    """metric@K curves per evaluated model and popularity vs coverage across them (PNG)."""
    from recsys.tables import read_arrow
    from recsys.tracking.plots import metric_at_k_curves, popularity_vs_coverage

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
        table = table[table["split"] == settings.split]
        tables[r.label] = table
        paths.append(metric_at_k_curves(table, f"{r.label} ({settings.split})", out / f"{r.name}_at_k.png"))
    if tables:
        paths.append(popularity_vs_coverage(tables, settings.k, out / "popularity_vs_coverage.png"))
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
    results: Sequence[StageResult],
    settings: ReportSettings,
    cfg: Mapping[str, Any],
    digest: str,
) -> tuple[Path, str]:
    """Publish ``report/`` (md, html, plots) and log it to a ``pipeline-<name>`` MLflow run.

    Returns:
        The report folder and the MLflow run id.
    """
    import mlflow

    from recsys.manifest import publish_atomically
    from recsys.tracking.runs import tracked_run

    title = f"Pipeline {pipeline} @ {date}"
    header, model_rows = _model_rows(results, settings)
    stage_rows = [
        [r.name, r.kind, r.status, f"{r.seconds:.1f}", r.key_metric(), r.mlflow_run_id or ""] for r in results
    ]
    sections = [
        ("Stages", ["stage", "kind", "status", "seconds", "key metric", "MLflow run"], stage_rows),
        (f"Ranking models ({settings.split}, full ranking)", header, model_rows),
        ("Other stages", ["stage", "metric", "value"], _other_rows(results)),
    ]
    final = run_folder / REPORT_DIR
    with (
        tracked_run(
            cfg, run_name=f"pipeline-{pipeline}", tags={"stage": "pipeline", "pipeline": pipeline}
        ) as run,
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
        mlflow.set_tag("run_date", date)
        metrics = sorted((mlflow_key(f"{r.name}/{k}"), v) for r in results for k, v in r.metrics.items())
        for start in range(0, len(metrics), _METRIC_BATCH):
            mlflow.log_metrics(dict(metrics[start : start + _METRIC_BATCH]))
        mlflow.log_metric("pipeline/stages_ran", sum(r.status == "ran" for r in results))
        mlflow.log_artifacts(str(staging), REPORT_DIR)
    return final, run.info.run_id
