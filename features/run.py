"""``recsys features``: ingest + validate the configured data, then build every features output."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from features.build import STAGE as FEATURES_STAGE
from features.build import FeaturesResult, run_features
from features.ingest import IngestResult, run_ingest
from features.session import build_session
from recsys.console import console, print_table, step
from recsys.paths import stage_dir

INGEST_STAGE = "ingest"


@dataclass
class FeaturesRun:
    ingest: IngestResult
    features: FeaturesResult


def run(cfg: Mapping[str, Any]) -> FeaturesRun:
    """Both stages, each published atomically; ingest is published before features starts."""
    spark = build_session(cfg["spark"])
    root, date = Path(cfg["paths"]["root"]).resolve(), str(cfg["run"]["date"])
    with step(f"ingest + validate data={cfg['data']['name']}"):
        ingest = run_ingest(spark, dict(cfg), stage_dir(root, date, INGEST_STAGE))
    with step("features: vocabularies, split, sequences, popularity, content, CTR"):
        features = run_features(spark, cfg, ingest.stage_dir, stage_dir(root, date, FEATURES_STAGE))
    return FeaturesRun(ingest, features)


def print_summary(result: FeaturesRun) -> None:
    rows = [
        (
            r.table,
            r.rows_read,
            r.rows_read - r.rows_bad,
            r.rows_bad,
            f"{r.bad_fraction:.2%}",
            ", ".join(r.files),
        )
        for r in result.ingest.tables
    ]
    print_table("Ingest", ["table", "read", "kept", "quarantined", "bad %", "source"], rows)
    problems = [
        (p.table, p.rule, p.column, p.count, p.example_reason, p.example_line[:60])
        for r in result.ingest.tables
        for p in r.problems
    ]
    if problems:
        print_table(
            "Quarantine by reason", ["table", "rule", "column", "rows", "reason (example)", "line"], problems
        )
    keys = (
        "distinct_user_id",
        "distinct_item_id",
        "num_embeddings",
        "rows_train",
        "rows_valid",
        "rows_test",
        "positives",
        "negatives",
    )
    out_rows = []
    for stage_result, manifests in (
        (result.ingest.stage_dir, result.ingest.manifests),
        (result.features.stage_dir, result.features.manifests),
    ):
        for name, manifest in manifests.items():
            details = ", ".join(f"{k}={manifest.counts[k]}" for k in keys if k in manifest.counts)
            out_rows.append((name, manifest.row_count, details, str(stage_result / name)))
    print_table("Outputs", ["output", "rows", "counts", "path"], out_rows)
    if result.features.previous_vocab is not None:
        console.print(f"vocabularies extended from {result.features.previous_vocab}")
    console.print(f"ingest outputs:   {result.ingest.stage_dir}", soft_wrap=True)
    console.print(f"features outputs: {result.features.stage_dir}", soft_wrap=True)
