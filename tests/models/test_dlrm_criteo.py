"""Criteo end to end: a TSV file -> ingest -> per-column vocabularies and a row-order split -> DLRM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from models.dlrm.train import run_train
from tests.helpers import raw_files
from tests.helpers.runs import ingest_and_features, rows

ROWS = 3000


def test_criteo_file_trains_dlrm_above_chance(spark: SparkSession, make_cfg: Any, tmp_path: Path) -> None:
    data = raw_files.criteo_learnable(tmp_path / "day_0.txt", ROWS, seed=5)
    cfg = make_cfg(
        "data=criteo",
        f"data.path={data}",
        "model=dlrm",  # the Criteo table mapping comes from model.variant_for_data
        "trainer=cpu",
        "model.batch_size=256",
        "model.epochs=2",
    )
    _, features = ingest_and_features(spark, cfg)
    counts = features.manifests["ctr"].counts
    assert (counts["rows_train"], counts["rows_valid"], counts["rows_test"]) == (2400, 300, 300)
    ctr = rows(features.stage_dir / "ctr")
    assert {r["split"] for r in ctr} == {"train", "valid", "test"}
    assert "cat_0" not in ctr[0] and isinstance(ctr[0]["cat_0_idx"], int)
    result = run_train(cfg)
    assert result.test_metrics["test/auc"] > 0.75
    assert result.test_metrics["test/logloss"] < 0.65  # a constant 0.5 prediction scores ln 2 = 0.693
