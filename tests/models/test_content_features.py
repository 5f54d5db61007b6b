"""Precomputed ``*_embedding`` item columns travel through the features ``content`` job (Spark) and come
out of ``load_content_vectors("precomputed:...")`` normalised, row = item_idx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession

from features.content import build_content
from features.io import write_output
from models.common import load_content_vectors
from recsys.config import compose, to_plain
from recsys.paths import RunPaths
from recsys.schema import FIRST_INDEX, ITEM_IDX
from recsys.tables import read_arrow

DATE = "2024-01-01"
BASE_COLUMNS = [ITEM_IDX, "item_id", "title", "text", "categories", "image_path", "has_metadata"]


def _vocab(spark: SparkSession) -> DataFrame:
    # i3 is in the vocabulary (seen in interactions) but has no metadata row.
    rows = [(FIRST_INDEX + i, f"i{i}") for i in range(4)]
    return spark.createDataFrame(rows, f"{ITEM_IDX} long, item_id string")


@pytest.mark.spark
def test_embedding_columns_are_carried_and_encoded(spark: SparkSession, tmp_path: Path) -> None:
    items = spark.createDataFrame(
        [
            ("i0", "A", "", ["x"], None, [3.0, 4.0], "[1.0, 0.0, 0.0]"),
            ("i1", "B", "", [], None, [0.0, 2.0], "[0.0, 5.0, 0.0]"),
            ("i2", "C", "", [], None, None, None),
        ],
        "item_id string, title string, text string, categories array<string>, image_path string, "
        "image_embedding array<double>, text_embedding string",
    )
    content = build_content(_vocab(spark), items, ". ").orderBy(ITEM_IDX)
    assert content.columns == [*BASE_COLUMNS, "image_embedding", "text_embedding"]
    assert dict(content.dtypes)["image_embedding"] == "array<float>"
    assert dict(content.dtypes)["text_embedding"] == "array<float>"

    features = RunPaths(tmp_path, DATE).features
    write_output(content, features / "content", config_hash="c", source_fingerprint="s")
    write_output(
        _vocab(spark),
        features / "vocab_item",
        config_hash="c",
        source_fingerprint="s",
        counts={"num_embeddings": FIRST_INDEX + 4},
    )
    rows = read_arrow(features / "content").sort_by(ITEM_IDX).to_pylist()
    assert [r["image_embedding"] for r in rows] == [[3.0, 4.0], [0.0, 2.0], None, None]

    cfg = to_plain(compose([f"paths.root={tmp_path}", f"run.date={DATE}"]))
    image = load_content_vectors(cfg, "precomputed:image_embedding")
    np.testing.assert_allclose(
        image.vectors[FIRST_INDEX : FIRST_INDEX + 2], [[0.6, 0.8], [0.0, 1.0]], atol=1e-6
    )
    np.testing.assert_array_equal(image.has_content, [False, False, True, True, False, False])
    text = load_content_vectors(cfg, "precomputed:text_embedding")
    np.testing.assert_allclose(text.vectors[FIRST_INDEX + 1], [0.0, 1.0, 0.0], atol=1e-6)


@pytest.mark.spark
def test_items_without_embeddings_keep_the_content_columns(spark: SparkSession) -> None:
    items = spark.createDataFrame(
        [("i0", "A", "plot", ["x"], None)],
        "item_id string, title string, text string, categories array<string>, image_path string",
    )
    content = build_content(_vocab(spark), items, ". ")
    assert content.columns == BASE_COLUMNS
    assert build_content(_vocab(spark), None, ". ").columns == BASE_COLUMNS
