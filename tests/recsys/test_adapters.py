"""Every input format, written as a small real file, ends up as the same canonical rows."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from recsys.datasets.atomic import bundled_folder
from tests.helpers import raw_files
from tests.helpers.runs import ingest, rows

pytestmark = pytest.mark.spark

EXPECTED_INTERACTIONS = [
    {"user_id": u, "item_id": i, "timestamp": t, "rating": r} for u, i, r, t in raw_files.RATINGS
]


def _interactions(folder: Path, prefix: str = "") -> list[dict[str, Any]]:
    out = rows(folder / "interactions", ["user_id", "item_id", "timestamp"])
    return [
        {
            "user_id": r["user_id"].removeprefix(prefix),
            "item_id": r["item_id"].removeprefix(prefix),
            "timestamp": r["timestamp"],
            "rating": r["rating"],
        }
        for r in out
    ]


@pytest.mark.parametrize(
    ("writer", "data", "extra"),
    [
        (raw_files.atomic, "recbole_atomic", ["data.stem=ml-test"]),
        (raw_files.movielens_dat, "movielens_1m", []),
        (raw_files.movielens_dat, "movielens_10m", []),
        (raw_files.movielens_csv, "movielens_20m", []),
        (raw_files.movielens_csv, "movielens_latest_small", []),
        (raw_files.canonical_parquet, "parquet", []),
    ],
)
def test_formats_give_canonical_interactions_and_items(
    spark: SparkSession,
    make_cfg: Any,
    tmp_path: Path,
    writer: Callable[[Path], Path],
    data: str,
    extra: list[str],
) -> None:
    folder = writer(tmp_path / "raw")
    result = ingest(spark, make_cfg(f"data={data}", f"data.path={folder}", *extra))
    assert _interactions(result.stage_dir) == EXPECTED_INTERACTIONS
    items = {r["item_id"]: r for r in rows(result.stage_dir / "items")}
    assert items["12"]["title"].startswith("American President")
    assert items["12"]["categories"] == ["Comedy", "Romance"]
    assert items["10"]["categories"] == ["Animation", "Comedy"]
    assert result.manifests["interactions"].counts == {"distinct_user_id": 3, "distinct_item_id": 4}


def test_movielens_csv_unquotes_titles_and_maps_no_genres(
    spark: SparkSession, make_cfg: Any, tmp_path: Path
) -> None:
    folder = raw_files.movielens_csv(tmp_path / "raw")
    result = ingest(spark, make_cfg("data=movielens_20m", f"data.path={folder}"))
    items = {r["item_id"]: r for r in rows(result.stage_dir / "items")}
    assert items["12"]["title"] == "American President, The (1995)"
    assert items["14"]["title"] == 'Ghost "Story" (2000)'
    assert items["14"]["categories"] == []


def test_movielens_100k_raw_decodes_latin1_and_genre_flags(
    spark: SparkSession, make_cfg: Any, tmp_path: Path
) -> None:
    folder = raw_files.movielens_100k_raw(tmp_path / "raw")
    result = ingest(spark, make_cfg("data=movielens_100k_raw", f"data.path={folder}"))
    integral = [r for r in EXPECTED_INTERACTIONS if float(r["rating"]).is_integer()]
    assert _interactions(result.stage_dir) == integral
    items = {r["item_id"]: r for r in rows(result.stage_dir / "items")}
    assert items["99"]["title"] == "Café Society (1995)"
    assert items["99"]["categories"] == []
    assert items["11"]["categories"] == ["Action", "Crime"]
    assert items["10"]["text"] == "Released 01-Jan-1995"
    users = {r["user_id"]: r for r in rows(result.stage_dir / "users")}
    assert users["2"] == {
        "user_id": "2",
        "age": "53",
        "gender": "F",
        "occupation": "other",
        "zip_code": "94043",
    }


def test_amazon_reviews_use_parent_asin_and_milliseconds(
    spark: SparkSession, make_cfg: Any, tmp_path: Path
) -> None:
    folder = raw_files.amazon2023(tmp_path / "raw")
    result = ingest(spark, make_cfg("data=amazon2023", f"data.path={folder}", "data.category=All_Beauty"))
    got = rows(result.stage_dir / "interactions", ["user_id", "item_id"])
    assert [(r["user_id"], r["item_id"], r["timestamp"], r["rating"]) for r in got] == [
        (f"U{u}", f"P{i}", t, r) for u, i, r, t in sorted(raw_files.RATINGS)
    ]
    items = {r["item_id"]: r for r in rows(result.stage_dir / "items")}
    assert items["P10"]["categories"] == ["Animation", "Comedy"]
    assert items["P11"]["categories"] == ["Beauty"]
    assert items["P10"]["text"] == "About Toy Story (1995) soft"


def test_criteo_rows_keep_missing_values_as_nulls(spark: SparkSession, make_cfg: Any, tmp_path: Path) -> None:
    folder = raw_files.criteo(tmp_path / "raw")
    result = ingest(spark, make_cfg("data=criteo", f"data.path={folder}"))
    got = rows(result.stage_dir / "ctr_events", ["int_1"])
    assert len(got) == 6
    first = next(r for r in got if r["int_0"] == 1)
    assert first["label"] == 1
    assert first["int_3"] is None  # (1 + 3) % 4 == 0 -> empty field in the file
    assert first["cat_0"] is None and first["cat_1"] == f"{(7 + 1) % 3:08x}"


def test_bundled_movielens_100k_reads_from_recbole_wheel(spark: SparkSession, make_cfg: Any) -> None:
    result = ingest(spark, make_cfg("data=movielens_100k"))
    counts = result.manifests["interactions"]
    assert counts.row_count == 100_000
    assert counts.counts == {"distinct_user_id": 943, "distinct_item_id": 1682}
    assert result.manifests["items"].row_count == 1682
    assert result.manifests["users"].row_count == 943
    assert result.manifests["quarantine"].row_count == 0


def test_amazon_local_images_are_attached(spark: SparkSession, make_cfg: Any, tmp_path: Path) -> None:
    folder = raw_files.amazon2023(tmp_path / "raw")
    images = tmp_path / "images"
    images.mkdir()
    (images / "P10.jpg").write_bytes(b"\xff\xd8\xff")
    cfg = make_cfg(
        "data=amazon2023", f"data.path={folder}", "data.category=All_Beauty", f"data.image_dir={images}"
    )
    items = {r["item_id"]: r["image_path"] for r in rows(ingest(spark, cfg).stage_dir / "items")}
    assert items == {"P10": str((images / "P10.jpg").resolve()), "P11": None, "P12": None}


def test_movielens_100k_from_a_folder_reads_the_same_format(
    spark: SparkSession, make_cfg: Any, tmp_path: Path
) -> None:
    bundled = bundled_folder("recbole/ml-100k")
    folder = tmp_path / "copy"
    folder.mkdir()
    for suffix in ("inter", "item", "user"):
        shutil.copy(bundled / f"ml-100k.{suffix}", folder)
    result = ingest(spark, make_cfg("data=movielens_100k", f"data.path={folder}"))
    assert result.manifests["interactions"].row_count == 100_000
    assert result.manifests["interactions"].source_fingerprint != ""
    assert all(str(folder) in f for t in result.tables for f in t.files)
