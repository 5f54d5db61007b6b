"""Each bad-input rule: what is quarantined, why, and when the job refuses to publish anything."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from recsys.errors import InputError, ValidationError
from tests.helpers import raw_files
from tests.helpers.runs import ingest, rows

BAD_LINES = [
    "4\t10\tabc\t500",  # type: rating not a number
    "\t10\t3\t500",  # null: empty user id
    "5\t10\t3",  # parse: 3 fields instead of 4
    "6\t10\t7\t500",  # range: 7 stars
    "1\t10\t5\t100",  # duplicate of the first good row (same user, item, timestamp)
    "7\t10\t3\tyesterday",  # type: timestamp
]


def _atomic_cfg(make_cfg: Any, folder: Path, *extra: str) -> dict[str, Any]:
    return make_cfg(
        "data=recbole_atomic",
        f"data.path={folder}",
        "data.stem=ml-test",
        "data.rating_min=1",
        "data.rating_max=5",
        *extra,
    )


def test_each_rule_quarantines_with_reason(spark: SparkSession, make_cfg: Any, tmp_path: Path) -> None:
    folder = raw_files.atomic(tmp_path / "raw", extra_inter=BAD_LINES)
    result = ingest(spark, _atomic_cfg(make_cfg, folder, "features.validation.max_bad_fraction=0.9"))
    quarantine = rows(result.stage_dir / "quarantine", ["raw"])
    by_raw = {r["raw"]: (r["rule"], r["column"], r["reason"]) for r in quarantine}
    assert by_raw == {
        "4\t10\tabc\t500": ("type", "rating", "rating is not a double: abc"),
        "\t10\t3\t500": ("null", "user_id", "user_id is empty"),
        "5\t10\t3": ("parse", "_line", "expected 4 fields, found 3"),
        "6\t10\t7\t500": ("range", "rating", "rating outside [1.0, 5.0]: 7"),
        "1\t10\t5\t100": (
            "duplicate",
            "user_id, item_id, timestamp",
            "duplicate (user_id, item_id, timestamp) of an earlier row",
        ),
        "7\t10\t3\tyesterday": ("type", "timestamp", "timestamp is not a long: yesterday"),
    }
    assert all(
        r["table"] == "interactions" and r["source_file"].endswith("ml-test.inter") for r in quarantine
    )
    kept = rows(result.stage_dir / "interactions", ["user_id", "item_id", "timestamp"])
    assert len(kept) == len(raw_files.RATINGS)
    report = next(t for t in result.tables if t.table == "interactions")
    assert (report.rows_read, report.rows_bad) == (len(raw_files.RATINGS) + len(BAD_LINES), len(BAD_LINES))
    assert {(p.rule, p.column): p.count for p in report.problems} == {
        ("type", "rating"): 1,
        ("type", "timestamp"): 1,
        ("null", "user_id"): 1,
        ("parse", "_line"): 1,
        ("range", "rating"): 1,
        ("duplicate", "user_id, item_id, timestamp"): 1,
    }
    assert result.manifests["quarantine"].counts["interactions/type/rating"] == 1


def test_above_threshold_fails_naming_file_column_and_line(
    spark: SparkSession, make_cfg: Any, tmp_path: Path
) -> None:
    folder = raw_files.atomic(tmp_path / "raw", extra_inter=["8\t10\t9\t600", "9\t11\t8\t700"])
    cfg = _atomic_cfg(make_cfg, folder)
    with pytest.raises(ValidationError) as caught:
        ingest(spark, cfg)
    message = str(caught.value)
    assert str(folder / "ml-test.inter") in message
    assert "column 'rating'" in message
    assert "'8\\t10\\t9\\t600'" in message
    assert "2 of 9 rows" in message and "limit of 5.0%" in message
    stage = Path(cfg["paths"]["root"]) / cfg["run"]["date"] / "ingest"
    assert not stage.exists()
    leftovers = [p.name for p in Path(cfg["paths"]["root"]).rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


def test_failed_rerun_keeps_previous_published_stage(
    spark: SparkSession, make_cfg: Any, tmp_path: Path
) -> None:
    good = raw_files.atomic(tmp_path / "good")
    cfg = _atomic_cfg(make_cfg, good)
    first = ingest(spark, cfg)
    before = json.loads((first.stage_dir / "interactions" / "manifest.json").read_text())
    bad = raw_files.atomic(tmp_path / "bad", extra_inter=["x\ty\tz\tw"] * 3)
    with pytest.raises(ValidationError):
        ingest(spark, _atomic_cfg(make_cfg, bad))
    after = json.loads((first.stage_dir / "interactions" / "manifest.json").read_text())
    assert after == before
    assert len(rows(first.stage_dir / "interactions")) == len(raw_files.RATINGS)


def test_missing_required_column_names_file_and_column(
    spark: SparkSession, make_cfg: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "raw"
    raw_files.write_lines(folder / "ml-test.inter", ["user_id:token\titem_id:token\trating:float", "1\t2\t3"])
    with pytest.raises(InputError, match=r"ml-test\.inter: required column 'timestamp' missing"):
        ingest(spark, _atomic_cfg(make_cfg, folder))


def test_csv_missing_column_names_header(spark: SparkSession, make_cfg: Any, tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    raw_files.write_lines(folder / "ratings.csv", ["userId,movieId,stars,timestamp", "1,2,3,4"])
    with pytest.raises(InputError, match=r"ratings\.csv: required column 'rating' missing"):
        ingest(spark, make_cfg("data=movielens_20m", f"data.path={folder}"))


def test_header_only_input_is_empty(spark: SparkSession, make_cfg: Any, tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    raw_files.write_lines(
        folder / "ml-test.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    )
    with pytest.raises(InputError, match=r"ml-test\.inter: no data rows in table 'interactions'"):
        ingest(spark, _atomic_cfg(make_cfg, folder))


def test_zero_byte_file_is_empty(spark: SparkSession, make_cfg: Any, tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "u.data").write_bytes(b"")
    with pytest.raises(InputError, match=r"u\.data: rating file is empty"):
        ingest(spark, make_cfg("data=movielens_100k_raw", f"data.path={folder}"))


def test_missing_and_unreadable_files(spark: SparkSession, make_cfg: Any, tmp_path: Path) -> None:
    folder = tmp_path / "raw"
    folder.mkdir()
    with pytest.raises(InputError, match=r"ratings\.dat: rating file not found"):
        ingest(spark, make_cfg("data=movielens_1m", f"data.path={folder}"))
    (folder / "ratings.dat").mkdir()
    with pytest.raises(InputError, match=r"ratings\.dat: rating file is not a regular file"):
        ingest(spark, make_cfg("data=movielens_1m", f"data.path={folder}"))
    with pytest.raises(InputError, match=r"data\.path is not a readable folder"):
        ingest(spark, make_cfg("data=movielens_1m", f"data.path={tmp_path / 'nowhere'}"))


def test_malformed_json_and_bad_label(spark: SparkSession, make_cfg: Any, tmp_path: Path) -> None:
    folder = raw_files.amazon2023(tmp_path / "raw")
    with (folder / "All_Beauty.jsonl").open("a") as handle:
        handle.write('{"rating": 5.0, "user_id": "U9", "parent_asin": \n')
    result = ingest(
        spark,
        make_cfg(
            "data=amazon2023",
            f"data.path={folder}",
            "data.category=All_Beauty",
            "features.validation.max_bad_fraction=0.5",
        ),
    )
    quarantine = rows(result.stage_dir / "quarantine")
    assert [(r["rule"], r["reason"]) for r in quarantine] == [("parse", "malformed JSON")]


def test_criteo_label_and_integer_rules(spark: SparkSession, make_cfg: Any, tmp_path: Path) -> None:
    folder = raw_files.criteo(tmp_path / "raw")
    good = (folder / "train.txt").read_text().splitlines()[0].split("\t")
    bad_label = "\t".join(["2", *good[1:]])
    bad_int = "\t".join([good[0], "x1", *good[2:]])
    with (folder / "train.txt").open("a") as handle:
        handle.write(bad_label + "\n" + bad_int + "\n")
    result = ingest(
        spark, make_cfg("data=criteo", f"data.path={folder}", "features.validation.max_bad_fraction=0.5")
    )
    reasons = sorted((r["rule"], r["column"]) for r in rows(result.stage_dir / "quarantine"))
    assert reasons == [("range", "label"), ("type", "int_0")]
