"""Vocabularies are stable across snapshots: known ids keep their index, new ids are appended."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from recsys.schema import FIRST_INDEX
from tests.helpers import raw_files
from tests.helpers.runs import ingest_and_features, rows


def _vocab(stage: Path, name: str, token: str, index: str) -> dict[str, int]:
    return {r[token]: r[index] for r in rows(stage / name)}


def test_first_snapshot_orders_by_first_appearance(
    spark: SparkSession, make_cfg: Any, tmp_path: Path
) -> None:
    folder = raw_files.atomic(tmp_path / "raw")
    cfg = make_cfg("data=recbole_atomic", f"data.path={folder}", "data.stem=ml-test", "run.date=2024-01-01")
    _, features = ingest_and_features(spark, cfg)
    users = _vocab(features.stage_dir, "vocab_user", "user_id", "user_idx")
    items = _vocab(features.stage_dir, "vocab_item", "item_id", "item_idx")
    # first events: user 1 @100, user 2 @150, user 3 @400; item 10 @100, 11 @200, 12 @300, 13 @350
    assert users == {"1": FIRST_INDEX, "2": FIRST_INDEX + 1, "3": FIRST_INDEX + 2}
    assert items == {"10": 2, "11": 3, "12": 4, "13": 5}
    assert features.manifests["vocab_item"].counts["num_embeddings"] == 6


def test_next_snapshot_keeps_known_ids(spark: SparkSession, make_cfg: Any, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    first = raw_files.atomic(tmp_path / "snap1")
    cfg1 = make_cfg(
        "data=recbole_atomic", f"data.path={first}", "data.stem=ml-test", "run.date=2024-01-01", root=root
    )
    _, f1 = ingest_and_features(spark, cfg1)

    # Second snapshot: user 1 and item 11 are gone, a new user "0" and item "05" appear *earlier* in time
    # and would sort first on their own; they must still be appended after the known ids.
    second = tmp_path / "snap2"
    raw_files.write_lines(
        second / "ml-test.inter",
        [
            "user_id:token\titem_id:token\trating:float\ttimestamp:float",
            "0\t05\t4\t50",
            "2\t10\t2\t150",
            "3\t12\t5\t400",
            "2\t13\t3\t500",
        ],
    )
    cfg2 = make_cfg(
        "data=recbole_atomic", f"data.path={second}", "data.stem=ml-test", "run.date=2024-02-01", root=root
    )
    _, f2 = ingest_and_features(spark, cfg2)
    assert f2.previous_vocab == f1.stage_dir
    users1 = _vocab(f1.stage_dir, "vocab_user", "user_id", "user_idx")
    users2 = _vocab(f2.stage_dir, "vocab_user", "user_id", "user_idx")
    items1 = _vocab(f1.stage_dir, "vocab_item", "item_id", "item_idx")
    items2 = _vocab(f2.stage_dir, "vocab_item", "item_id", "item_idx")
    assert {k: users2[k] for k in users1} == users1  # every known user, even absent ones, keeps its index
    assert {k: items2[k] for k in items1} == items1
    assert users2["0"] == max(users1.values()) + 1
    assert items2["05"] == max(items1.values()) + 1
    categories1 = _vocab(f1.stage_dir, "vocab_category", "category", "category_idx")
    categories2 = _vocab(f2.stage_dir, "vocab_category", "category", "category_idx")
    assert categories2 == categories1  # snapshot 2 has no item file: categories carried over unchanged
    assert f2.manifests["vocab_user"].counts["new_tokens"] == 1
    split = {
        (r["user_id"], r["item_id"]): (r["user_idx"], r["item_idx"]) for r in rows(f2.stage_dir / "split")
    }
    assert split[("2", "10")] == (users1["2"], items1["10"])


def test_criteo_gets_one_vocabulary_per_categorical_column(
    spark: SparkSession, make_cfg: Any, tmp_path: Path
) -> None:
    folder = raw_files.criteo(tmp_path / "raw")
    _, features = ingest_and_features(spark, make_cfg("data=criteo", f"data.path={folder}"))
    names = {n for n in features.manifests if n.startswith("vocab_")}
    assert names == {f"vocab_cat_{i}" for i in range(26)}
    vocab = _vocab(features.stage_dir, "vocab_cat_1", "cat_1", "cat_1_idx")
    # cat_1 of row n is (7n + 1) % 3 as 8 hex digits: tokens 1, 2, 0 -> three ids, ordered by token
    assert vocab == {f"{0:08x}": 2, f"{1:08x}": 3, f"{2:08x}": 4}
    encoded = rows(features.stage_dir / "ctr", ["int_1"])
    assert len(encoded) == 6 and "cat_1" not in encoded[0]
    row = next(r for r in encoded if r["int_0"] == 1)
    assert row["cat_1_idx"] == vocab[f"{(7 + 1) % 3:08x}"]
    assert row["cat_0_idx"] == 1  # empty field -> null token -> out-of-vocabulary index
    assert features.manifests["ctr"].counts["num_cat_1"] == 5
