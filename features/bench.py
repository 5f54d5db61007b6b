"""Spark feature jobs vs the same computation in DuckDB, on the same synthetic Parquet, in one run.

Workload (both engines, from the canonical interactions Parquet to written Parquet): user and item
vocabularies (first appearance order), leave-one-out split, per-user sequences (last N, train + the
valid/test histories) and train item popularity. The outputs of both engines are compared row by row, so
the ratio is between two engines that computed the same thing.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from features.io import read_parquet
from features.sequences import HISTORY_ITEMS, build_sequences, item_popularity
from features.session import build_session
from features.split import split_leave_one_out
from features.vocab import FIRST_SEEN, ITEM_VOCAB, USER_VOCAB, encode, extend_vocabulary
from recsys.console import step
from recsys.datasets.synthetic import SyntheticSpec, default_folder, write
from recsys.schema import FIRST_INDEX, ITEM_ID, ITEM_IDX, SPLIT, TIMESTAMP, USER_ID, USER_IDX

_MIN_USER_EVENTS = 3


def spark_job(spark: Any, source: Path, out: Path, max_length: int) -> None:
    events = read_parquet(spark, source).select(USER_ID, ITEM_ID, TIMESTAMP)
    vocabs = {}
    for spec in (USER_VOCAB, ITEM_VOCAB):
        tokens = events.select(spec.token, events[TIMESTAMP].alias(FIRST_SEEN))
        vocabs[spec.name] = extend_vocabulary(tokens, spec, None)
    encoded = encode(encode(events, vocabs[USER_VOCAB.name], USER_VOCAB), vocabs[ITEM_VOCAB.name], ITEM_VOCAB)
    encoded.select(USER_IDX, ITEM_IDX, ITEM_ID, TIMESTAMP).write.mode("overwrite").parquet(
        str(out / "encoded")
    )
    split = split_leave_one_out(read_parquet(spark, out / "encoded"), _MIN_USER_EVENTS)
    build_sequences(split, max_length).write.mode("overwrite").parquet(str(out / "sequences"))
    item_popularity(split).write.mode("overwrite").parquet(str(out / "popularity"))


def duckdb_job(source: Path, out: Path, max_length: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    n = max_length
    con = duckdb.connect()
    con.execute(f"SET threads TO {os.cpu_count() or 1}")
    con.execute(f"CREATE TEMP TABLE ev AS SELECT user_id, item_id, timestamp FROM read_parquet('{source}')")
    for token, index in ((USER_ID, USER_IDX), (ITEM_ID, ITEM_IDX)):
        con.execute(
            f"CREATE TEMP TABLE v_{token} AS SELECT {token}, "
            f"row_number() OVER (ORDER BY min(timestamp), {token}) + {FIRST_INDEX - 1} AS {index} "
            f"FROM ev GROUP BY {token}"
        )
    con.execute(
        "CREATE TEMP TABLE per_user AS SELECT user_idx, "
        "list(item_idx ORDER BY timestamp, item_id) AS items "
        "FROM ev JOIN v_user_id USING (user_id) JOIN v_item_id USING (item_id) GROUP BY user_idx"
    )
    # Leave-one-out: users with >= 3 events have their last event in test and the one before in valid.
    con.execute(
        f"""
        COPY (
          WITH u AS (SELECT *, len(items) AS n, len(items) >= {_MIN_USER_EVENTS} AS eligible FROM per_user),
          t AS (SELECT *, CASE WHEN eligible THEN n - 2 ELSE n END AS n_train FROM u)
          SELECT user_idx, 'train' AS split, items[greatest(1, n_train - {n} + 1):n_train] AS {HISTORY_ITEMS},
                 NULL::BIGINT AS target_item_idx FROM t
          UNION ALL
          SELECT user_idx, 'valid', items[greatest(1, n - 1 - {n}):n - 2], items[n - 1] FROM t WHERE eligible
          UNION ALL
          SELECT user_idx, 'test', items[greatest(1, n - {n}):n - 1], items[n] FROM t WHERE eligible
        ) TO '{out}/sequences.parquet' (FORMAT parquet)
        """
    )
    con.execute(
        f"""
        COPY (
          WITH x AS (
            SELECT user_idx, unnest(CASE WHEN len(items) >= {_MIN_USER_EVENTS} THEN items[1:len(items) - 2]
                                         ELSE items END) AS item_idx FROM per_user)
          SELECT item_idx, count(*) AS interactions, count(DISTINCT user_idx) AS users
          FROM x GROUP BY item_idx
        ) TO '{out}/popularity.parquet' (FORMAT parquet)
        """
    )
    con.close()


def _sorted_table(path: Path, columns: list[str], keys: list[str]) -> pa.Table:
    table = ds.dataset(str(path), format="parquet").to_table(columns=columns)
    return table.sort_by([(k, "ascending") for k in keys])


def outputs_match(spark_out: Path, duck_out: Path) -> dict[str, bool]:
    seq_cols = [USER_IDX, SPLIT, HISTORY_ITEMS, "target_item_idx"]
    seq_keys = [USER_IDX, SPLIT]
    pop_cols = [ITEM_IDX, "interactions", "users"]
    spark_seq = _sorted_table(spark_out / "sequences", seq_cols, seq_keys)
    duck_seq = _sorted_table(duck_out / "sequences.parquet", seq_cols, seq_keys).cast(spark_seq.schema)
    spark_pop = _sorted_table(spark_out / "popularity", pop_cols, [ITEM_IDX])
    duck_pop = _sorted_table(duck_out / "popularity.parquet", pop_cols, [ITEM_IDX]).cast(spark_pop.schema)
    return {"sequences": spark_seq.equals(duck_seq), "popularity": spark_pop.equals(duck_pop)}


def run_features_bench(cfg: Mapping[str, Any]) -> dict[str, Any]:
    bench = cfg["bench"]
    spec = SyntheticSpec(
        num_users=int(bench["num_users"]),
        num_items=int(bench["num_items"]),
        num_events=int(bench["num_events"]),
        seed=int(cfg["seed"]),
    )
    root = Path(cfg["paths"]["root"])
    max_length = int(cfg["features"]["sequences"]["max_length"])
    with step(f"generate synthetic data ({spec.num_events:,} events)"):
        source = write(spec, default_folder(root, spec)) / "interactions.parquet"
    work = root / "_bench" / "features"
    shutil.rmtree(work, ignore_errors=True)
    spark = build_session(cfg["spark"])
    spark.range(1).count()  # JVM start-up is not part of the measured job

    start = time.perf_counter()
    with step("spark: vocab + split + sequences + popularity"):
        spark_job(spark, source, work / "spark", max_length)
    spark_seconds = time.perf_counter() - start
    start = time.perf_counter()
    with step("duckdb: same computation"):
        duckdb_job(source, work / "duckdb", max_length)
    duck_seconds = time.perf_counter() - start
    with step("compare outputs row by row"):
        match = outputs_match(work / "spark", work / "duckdb")
    spark.stop()
    return {
        "params": {**spec.__dict__, "max_length": max_length, "spark_master": cfg["spark"]["master"]},
        "outputs_identical": match,
        "timings": [
            {
                "engine": "spark",
                "step": "vocab+split+sequences+popularity",
                "seconds": spark_seconds,
                "ratio": round(spark_seconds / duck_seconds, 2),
            },
            {
                "engine": "duckdb",
                "step": "vocab+split+sequences+popularity",
                "seconds": duck_seconds,
                "ratio": 1.0,
            },
        ],
    }
