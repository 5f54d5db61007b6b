"""The `recsys` command as a user runs it: a subprocess in a scratch folder, exit codes, files, messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import raw_files
from tests.helpers.runs import rows

SPARK = ["spark.master='local[2]'", "spark.shuffle_partitions=4"]


def _recsys(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "recsys"
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def test_features_on_bundled_movielens_100k(tmp_path: Path) -> None:
    done = _recsys(
        "features", "data=movielens_100k", "paths.root=runs", "run.date=2024-05-01", *SPARK, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    ingest = tmp_path / "runs" / "2024-05-01" / "ingest"
    features = tmp_path / "runs" / "2024-05-01" / "features"
    inter = json.loads((ingest / "interactions" / "manifest.json").read_text())
    assert inter["row_count"] == 100_000
    assert inter["counts"] == {"distinct_user_id": 943, "distinct_item_id": 1682}
    split = json.loads((features / "split" / "manifest.json").read_text())
    assert split["counts"]["rows_valid"] == 943 and split["counts"]["rows_test"] == 943
    assert split["counts"]["rows_train"] == 100_000 - 2 * 943
    per_user: dict[tuple[int, str], int] = {}
    for row in rows(features / "split"):
        if row["split"] != "train":
            per_user[(row["user_idx"], row["split"])] = per_user.get((row["user_idx"], row["split"]), 0) + 1
    assert len(per_user) == 2 * 943 and set(per_user.values()) == {1}
    sequences = json.loads((features / "sequences" / "manifest.json").read_text())
    assert sequences["row_count"] == 3 * 943
    assert (
        json.loads((features / "vocab_item" / "manifest.json").read_text())["counts"]["num_embeddings"]
        == 1682 + 2
    )
    for output in ("vocab_user", "vocab_item", "split", "sequences", "popularity", "content", "ctr", "users"):
        manifest = json.loads((features / output / "manifest.json").read_text())
        assert manifest["schema"] and manifest["config_hash"] and manifest["source_fingerprint"]
    # Results on stdout, untruncated although piped; progress on stderr; no Spark startup noise.
    assert "Ingest outputs" in done.stdout and "Features outputs" in done.stdout
    assert f"features outputs: {features}" in done.stdout
    assert "…" not in done.stdout  # table cells fold; paths are never cropped
    spark_noise = ("log4j", "NativeCodeLoader", "Setting default log level", "resolves to a loopback address")
    assert not [line for line in done.stderr.splitlines() if any(n in line for n in spark_noise)]


def test_bad_input_exits_2_with_one_paragraph(tmp_path: Path) -> None:
    folder = raw_files.movielens_dat(tmp_path / "raw")
    with (folder / "ratings.dat").open("a") as handle:
        handle.write("5::10::nope::100\n")
    done = _recsys(
        "features", "data=movielens_1m", f"data.path={folder}", "paths.root=runs", *SPARK, cwd=tmp_path
    )
    assert done.returncode == 2
    message = done.stderr.replace("\n", " ")
    assert "recsys features failed:" in message
    assert "ratings.dat" in message and "column 'rating'" in message and "5::10::nope::100" in message
    assert not (tmp_path / "runs" / "1970-01-01" / "ingest").exists()


def test_missing_mandatory_config_exits_2(tmp_path: Path) -> None:
    done = _recsys("features", "data=movielens_1m", cwd=tmp_path)
    assert done.returncode == 2
    assert "data.path" in done.stderr


def test_bench_features_writes_json_with_ratio(tmp_path: Path) -> None:
    done = _recsys(
        "bench",
        "features",
        "paths.root=runs",
        "bench.num_events=20000",
        "bench.num_users=500",
        "bench.num_items=300",
        "bench.out_dir=results",
        *SPARK,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    [result_file] = list((tmp_path / "results").glob("features-*.json"))
    result = json.loads(result_file.read_text())
    assert result["outputs_identical"] == {"sequences": True, "popularity": True}
    spark_row, duck_row = result["timings"]
    assert spark_row["engine"] == "spark" and duck_row["engine"] == "duckdb"
    assert spark_row["ratio"] == round(spark_row["seconds"] / duck_row["seconds"], 2)
