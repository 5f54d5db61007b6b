"""The two feature stages: ``ingest`` (read + validate the configured data) and ``features`` (every features
output from the published ingest). ``recsys features`` runs both; the pipeline runs them as two stages."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from features.build import FeaturesResult, run_features
from features.ingest import IngestResult, run_ingest
from features.session import build_session
from recsys.console import console, print_result, print_table, step
from recsys.manifest import Manifest
from recsys.paths import RunPaths
from recsys.stage import StageResult

# Counts shown in the outputs table when a manifest has them.
SUMMARY_COUNTS = (
    "distinct_user_id",
    "distinct_item_id",
    "num_embeddings",
    "rows_train",
    "rows_valid",
    "rows_test",
    "positives",
    "negatives",
)


@contextmanager
def _spark_session(cfg: Mapping[str, Any]) -> Iterator[Any]:
    """The configured session, stopped afterwards when this call started it: training that follows in the
    same process gets the JVM's memory back (a session that was already up, e.g. the tests', stays)."""
    from pyspark.sql import SparkSession

    existing = SparkSession.getActiveSession()
    try:
        yield build_session(cfg["spark"])
    finally:
        session = SparkSession.getActiveSession()
        if existing is None and session is not None:
            session.stop()


def ingest_stage(cfg: Mapping[str, Any]) -> StageResult:
    """Read + validate ``data`` and publish ``<run>/ingest/`` (bad rows to quarantine)."""
    paths = RunPaths.from_cfg(cfg)
    # The session stays up: the features stage usually follows in the same process and stops it.
    with step(f"ingest + validate data={cfg['data']['name']}"):
        result = run_ingest(build_session(cfg["spark"]), dict(cfg), paths.ingest)
    print_ingest(result)
    metrics = {f"{r.table}.rows_read": float(r.rows_read) for r in result.tables}
    metrics.update({f"{r.table}.rows_bad": float(r.rows_bad) for r in result.tables})
    return StageResult(metrics, None, (result.stage_dir,))


def features_stage(cfg: Mapping[str, Any]) -> StageResult:
    """Vocabularies, split, sequences, popularity, content and CTR samples from the published ingest."""
    paths = RunPaths.from_cfg(cfg)
    with (
        _spark_session(cfg) as spark,
        step("features: vocabularies, split, sequences, popularity, content, CTR"),
    ):
        result = run_features(spark, cfg, paths.ingest, paths.features)
    print_features(result)
    split = result.manifests["split"]
    metrics = {f"split.{k}": float(v) for k, v in split.counts.items()}
    metrics["split.rows"] = float(split.row_count)
    return StageResult(metrics, None, (result.stage_dir,))


def print_ingest(result: IngestResult) -> None:
    rows = [
        (
            r.table,
            r.rows_read,
            r.rows_read - r.rows_bad,
            r.rows_bad,
            f"{r.bad_fraction:.2%}",
            ", ".join(r.files),
        )
        for r in result.tables
    ]
    print_table("Ingest", ["table", "read", "kept", "quarantined", "bad %", "source"], rows)
    problems = [
        (p.table, p.rule, p.column, p.count, p.example_reason, p.example_line[:60])
        for r in result.tables
        for p in r.problems
    ]
    if problems:
        print_table(
            "Quarantine by reason", ["table", "rule", "column", "rows", "reason (example)", "line"], problems
        )
    _print_outputs("Ingest outputs", result.stage_dir, result.manifests)


def print_features(result: FeaturesResult) -> None:
    _print_outputs("Features outputs", result.stage_dir, result.manifests)
    if result.previous_vocab is not None:
        console.print(f"vocabularies extended from {result.previous_vocab}")


def _print_outputs(title: str, folder: Path, manifests: Mapping[str, Manifest]) -> None:
    rows = []
    for name, manifest in manifests.items():
        details = ", ".join(f"{k}={manifest.counts[k]}" for k in SUMMARY_COUNTS if k in manifest.counts)
        rows.append((name, manifest.row_count, details, str(folder / name)))
    print_table(title, ["output", "rows", "counts", "path"], rows)
    print_result(f"{title.lower()}: {folder}")
