"""End-of-run report: a terminal table, ``report.md`` + ``report.html`` with plots, logged to the pipeline's
MLflow run.

The report is built from the success markers (every stage's key numbers) and the evaluate stages'
published metric tables (for the plots), so a rerun that skipped every stage reports the same numbers as
the run that computed them. It is published atomically under ``<root>/<date>/report/``.

``report.html`` is one self-contained file: the plots are embedded as data URIs, so it renders the same
from disk, from MLflow's artifact view and as an e-mail attachment. It opens with the provenance (commit,
config hash, data fingerprint, run date), then one table per question: the stages, the ranking models side
by side, the two-stage gain, and one metric-by-split table per other stage; an undefined (NaN) metric is
shown as ``n/a`` with the reason below its table.
"""

from __future__ import annotations

import base64
import html
import json
import math
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
    # What the stage cost when it ran now (recsys.resources.ResourceUsage.as_dict()); empty when skipped.
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.model or self.name

    def key_metric(self) -> str:
        if self.metric is None or self.metric not in self.metrics:
            return ""
        return f"{self.metric} = {_number(self.metrics[self.metric])}"


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.4f}"


def _cost_cells(row: StageRow) -> tuple[str, str]:
    """CPU seconds (every process of the stage) and peak RSS in MiB, blank for a stage that did not run."""
    if not row.resources:
        return "", ""
    return f"{row.resources['cpu_s']:.0f}", f"{row.resources['peak_rss_mb']:,.0f}"


def print_summary(pipeline: str, date: str, results: Sequence[StageRow], total_seconds: float) -> None:
    rows = [
        (
            r.name,
            r.kind,
            r.status,
            f"{r.seconds:.1f}",
            *_cost_cells(r),
            r.key_metric(),
            r.reason,
        )
        for r in results
    ]
    print_table(
        f"pipeline {pipeline} @ {date}: {total_seconds:.1f}s",
        ["stage", "kind", "status", "seconds", "CPU s", "peak MiB", "key metric", "why"],
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


# Split names in metric keys; `valid/` is an older spelling of `val/` and is shown as it.
SPLIT_COLUMNS = ("train", "val", "test")
_SPLIT_SPELLING = {"valid": "val"}
VALUE_COLUMN = "value"
NOT_AVAILABLE = "n/a"
# Why a metric can be undefined (NaN) on a run's data: shown under the table that has one.
NAN_REASONS = {
    "gauc": "GAUC averages per-user AUCs over users with both a positive and a negative sample; "
    "no user of this split has both",
    "auc": "AUC needs both positive and negative samples; this split has one class only",
}
NAN_DEFAULT = "undefined on this data (e.g. an empty split or a constant prediction)"


@dataclass(frozen=True)
class Section:
    """One table of the report: a heading, the header, the rows, and notes printed under it."""

    heading: str
    header: list[str]
    rows: list[list[str]]
    notes: tuple[str, ...] = ()


def _split_of(key: str) -> tuple[str, str]:
    """``test/auc`` -> (``test``, ``auc``); ``arm/valid/auc_mean`` -> (``val``, ``arm/auc_mean``);
    a key without a split -> (``value``, key)."""
    parts = key.split("/")
    for i, part in enumerate(parts):
        split = _SPLIT_SPELLING.get(part, part)
        if split in SPLIT_COLUMNS:
            return split, "/".join(parts[:i] + parts[i + 1 :])
    return VALUE_COLUMN, key


def _cell(value: float, name: str, notes: dict[str, str]) -> str:
    if math.isnan(value):
        base = name.rsplit("/", 1)[-1].split("_at_")[0]
        notes[name] = NAN_REASONS.get(base, NAN_DEFAULT)
        return NOT_AVAILABLE
    return _number(value)


def _stage_pivots(results: Sequence[StageRow]) -> list[Section]:
    """Every other stage's metrics as one table: a row per metric, a column per split (one spelling)."""
    sections = []
    two_stage = {k for _, k in TWO_STAGE_COLUMNS}
    for r in results:
        if r.kind == "evaluate" or r.metrics.keys() & two_stage:
            continue
        table: dict[str, dict[str, float]] = {}
        for key, value in r.metrics.items():
            if "/bucket_" in key:  # per-activity-bucket values stay in MLflow
                continue
            split, name = _split_of(key)
            table.setdefault(name, {})[split] = value
        if not table:
            continue
        columns = [c for c in (*SPLIT_COLUMNS, VALUE_COLUMN) if any(c in v for v in table.values())]
        notes: dict[str, str] = {}
        rows = [
            [name, *(_cell(values[c], name, notes) if c in values else "" for c in columns)]
            for name, values in sorted(table.items())
        ]
        reasons = tuple(f"{NOT_AVAILABLE}: {name}: {why}." for name, why in sorted(notes.items()))
        sections.append(
            Section(f"{r.name} ({r.label})" if r.model else r.name, ["metric", *columns], rows, reasons)
        )
    return sections


def _provenance(
    cfg: Mapping[str, Any], pipeline: str, date: str, digest: str, run_id: str, written_at: str
) -> Section:
    from recsys.manifest import config_hash
    from recsys.tracking.runs import data_fingerprint, git_commit

    rows = [
        ["pipeline", pipeline],
        ["run date", date],
        ["git commit", git_commit() or "unknown (not run from a git checkout)"],
        ["config hash", config_hash(cfg)],
        ["data fingerprint", data_fingerprint(cfg) or "unknown (no ingest output)"],
        ["stage markers digest", digest],
        ["MLflow run", run_id],
        ["written at (UTC)", written_at],
    ]
    return Section("Provenance", ["", ""], rows)


def _plots(run_folder: Path, results: Sequence[StageRow], settings: ReportSettings, out: Path) -> list[Path]:
    """metric@K curves per evaluated model and popularity vs coverage across them (PNG)."""
    from recsys.tables import read_arrow
    from recsys.tracking.plots import metric_at_k_curves, models_at_k, popularity_vs_coverage, two_stage_bars

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
        for metric in settings.ranking_metrics:
            paths.append(models_at_k(tables, metric, settings.split, out / f"models_{metric}_at_k.png"))
        paths.append(popularity_vs_coverage(tables, settings.k, out / "popularity_vs_coverage.png"))
    two_stage = {r.name: r.metrics for r in _two_stage(results)}
    if two_stage:
        paths.append(two_stage_bars(two_stage, out / "two_stage.png"))
    return paths


def _markdown(title: str, sections: Sequence[Section], plots: list[Path]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        if not section.rows:
            continue
        header = section.header
        lines += [f"## {section.heading}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in section.rows]
        lines += ["", *(f"- {note}" for note in section.notes)]
        if section.notes:
            lines.append("")
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({PLOTS_DIR}/{p.name})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def _inline_png(path: Path) -> str:
    """A plot as a data URI: the HTML needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html(title: str, sections: Sequence[Section], plots: list[Path]) -> str:
    esc = html.escape
    parts = [
        "<!doctype html>",
        f'<html><head><meta charset="utf-8"><title>{esc(title)}</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;margin-bottom:.5em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}"
        "p.note{color:#555;font-size:90%;margin:0 0 .3em}section{margin-bottom:1.5em}"
        "img{max-width:640px;margin:0 1em 1em 0}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    for section in sections:
        if not section.rows:
            continue
        parts.append(f"<section><h2>{esc(section.heading)}</h2><table>")
        if any(section.header):
            parts.append("<tr>" + "".join(f"<th>{esc(h)}</th>" for h in section.header) + "</tr>")
        for row in section.rows:
            parts.append("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>")
        parts.append("</table>")
        parts += [f'<p class="note">{esc(note)}</p>' for note in section.notes]
        parts.append("</section>")
    if plots:
        parts.append("<h2>Plots</h2>")
        parts += [f'<img src="{_inline_png(p)}" alt="{esc(p.stem)}" title="{esc(p.stem)}">' for p in plots]
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
        [r.name, r.kind, r.status, f"{r.seconds:.1f}", *_cost_cells(r), r.key_metric(), r.mlflow_run_id or ""]
        for r in results
    ]
    written_at = datetime.now(UTC).isoformat(timespec="seconds")
    sections = [
        _provenance(cfg, pipeline, date, digest, pipeline_run_id, written_at),
        Section(
            "Stages",
            ["stage", "kind", "status", "seconds", "CPU s", "peak MiB", "key metric", "MLflow run"],
            stage_rows,
        ),
        Section(f"Ranking models ({settings.split}, full ranking)", header, model_rows),
        Section("Two-stage: retrieval vs re-ranked (test, full catalog)", *_two_stage_rows(results)),
        *_stage_pivots(results),
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
            "written_at": written_at,
        }
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")
        metrics = {mlflow_key(f"{r.name}/{k}"): v for r in results for k, v in r.metrics.items()}
        metrics["pipeline/stages_ran"] = float(sum(r.status == "ran" for r in results))
        log_metrics(metrics)
        log_artifacts(staging, REPORT_DIR)
    return final
