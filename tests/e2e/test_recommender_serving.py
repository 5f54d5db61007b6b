"""The served two-stage recommender as a user builds and calls it: features, two baselines, the candidate
ranker and the rerank stage through the command line (which registers ``recsys-recommender``), then
``mlflow models serve`` on loopback answering a known user, cold requests (popularity fallback, flagged)
and malformed requests (HTTP 400 with a message, never a 500); ``recsys bench serving`` timing it against
the served PureSVD retriever in one run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from recsys.tables import read_arrow
from tests.helpers.isolated import assert_carries_its_code, load_without_checkout
from tests.helpers.serving import invoke, served

SYNTHETIC = [
    "data=synthetic",
    "data.num_users=120",
    "data.num_items=80",
    "data.num_events=4000",
    "paths.root=runs",
    "run.date=2024-01-01",
    "spark.master='local[2]'",
    "spark.shuffle_partitions=4",
]
RANKER = [
    "model=ranker",
    "model.candidates.retriever=ease",
    "model.candidates.score_features=[mostpop]",
    "model.candidates.k=20",
    "model.batch_size=160",
    "model.epochs=2",
    "model.dense_features.identity=[retriever_z,score_mostpop_z,user_ctr_before,item_ctr_before]",
    "model.tables=[{name: t_category, features: [category_idx], size: num_categories, pooling: mean}]",
]
NAME = "recsys-recommender"


def _recsys(*args: str, cwd: Path) -> None:
    exe = Path(sys.executable).parent / "recsys"
    done = subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recommender")
    _recsys("features", *SYNTHETIC, cwd=root)
    for model in ("ease", "mostpop", "puresvd"):
        _recsys("evaluate", f"model={model}", *SYNTHETIC, cwd=root)
    _recsys("index", "model=puresvd", "index=flat", *SYNTHETIC, cwd=root)  # the bench's reference
    _recsys("train", *RANKER, *SYNTHETIC, cwd=root)
    _recsys("rerank", *RANKER, *SYNTHETIC, cwd=root)
    return root


def test_rerank_registers_the_recommender_behind_the_gate(workspace: Path) -> None:
    uri = f"sqlite:///{workspace / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias(NAME, "champion")
    metrics = client.get_run(str(version.run_id)).data.metrics
    assert "two_stage/reranked_ndcg_at_10" in metrics and "two_stage/candidate_recall" in metrics
    # The registry says which model clients call: the recommender, not the ranker's encoded-row scorer.
    assert client.get_registered_model(NAME).tags["audience"] == "public"
    ranker = client.get_registered_model("recsys-ranker")
    assert ranker.tags["audience"] == "internal"
    assert "recsys-recommender" in ranker.description and "user_idx" in ranker.description


def test_served_recommender_answers_known_cold_and_malformed_requests(workspace: Path) -> None:
    uri = f"sqlite:///{workspace / 'runs' / 'mlflow.db'}"
    features = workspace / "runs" / "2024-01-01" / "features"
    split = read_arrow(features / "split").to_pandas()
    users = read_arrow(features / "vocab_user").to_pandas()
    items = read_arrow(features / "vocab_item").to_pandas()
    item_id = dict(zip(items["item_idx"], items["item_id"].astype(str), strict=True))
    user = int(split["user_idx"].iloc[0])
    user_id = str(users.loc[users["user_idx"] == user, "user_id"].iloc[0])
    history = [item_id[i] for i in split.loc[split["user_idx"] == user].sort_values("timestamp")["item_idx"]]
    counts = split["item_idx"].value_counts()
    most_popular = item_id[int(counts.index[0])]
    with served(f"models:/{NAME}@champion", uri, workspace) as port:
        status, answer = invoke(
            port,
            {
                "dataframe_records": [
                    {"history": history[:5], "user_id": user_id},
                    {"history": ["no-such-item"], "user_id": "no-such-user"},
                    {"history": [], "user_id": None},
                ],
                "params": {"k": 5},
            },
        )
        assert status == 200, answer
        known, unknown, empty = answer["predictions"]
        # the known user gets the ranked list: unseen items, best first, not the fallback
        assert known["fallback"] is False and len(known["item_ids"]) == 5
        assert not set(known["item_ids"]) & set(history)
        assert known["scores"] == sorted(known["scores"], reverse=True)
        # cold requests get the most popular items, flagged, with their popularity as the score
        for cold in (unknown, empty):
            assert cold["fallback"] is True and len(cold["item_ids"]) == 5
            assert cold["item_ids"][0] == most_popular and min(cold["scores"]) > 0
        # malformed: a missing column, a history that is not a list, k out of range -> 400 with a message
        for payload in (
            {"dataframe_records": [{"items": ["i1"]}]},
            {"dataframe_records": [{"history": "i1", "user_id": None}]},
            {"dataframe_records": [{"history": ["i1"], "user_id": None}], "params": {"k": 0}},
        ):
            status, answer = invoke(port, payload)
            assert 400 <= status < 500, (payload, status, answer)
            assert answer.get("message"), answer


def test_served_lists_equal_in_process_predictions(workspace: Path) -> None:
    """What the server answers is the pyfunc's own prediction (no serving-only code path)."""
    import mlflow

    uri = f"sqlite:///{workspace / 'runs' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{NAME}@champion")
    request = pd.DataFrame({"history": [["i1", "i2"], []], "user_id": [None, None]})
    first = model.predict(request)
    second = model.predict(request)
    assert first["item_ids"].tolist() == second["item_ids"].tolist()
    assert first["fallback"].tolist() == [False, True]
    # The registered recommender loads and answers the same where the checkout cannot be imported.
    isolated = load_without_checkout(
        f"models:/{NAME}@champion", uri, workspace, request.to_dict(orient="records")
    )
    assert_carries_its_code(isolated)
    assert isolated.answer["item_ids"] == first["item_ids"].tolist()


def test_bench_serving_times_both_served_models_in_one_run(workspace: Path) -> None:
    _recsys(
        "bench",
        "serving",
        *SYNTHETIC,
        "bench.single_requests=6",
        "bench.batch_requests=2",
        "bench.batch_users=10",
        "bench.warmup_requests=1",
        "bench.k=5",
        "bench.out_dir=bench_out",
        cwd=workspace,
    )
    [saved] = (workspace / "bench_out").glob("serving-*.json")
    results = json.loads(saved.read_text())
    rows = {(r["model"], r["mode"]): r for r in results["latency"]}
    assert set(rows) == {(m, mode) for m in ("retriever", "recommender") for mode in ("single", "batch")}
    assert rows[("recommender", "batch")]["users_per_request"] == 10
    assert rows[("retriever", "single")]["requests"] == 6
    for (_, mode), row in rows.items():
        assert 0 < row["p50_ms"] <= row["p99_ms"]
        # known users of the snapshot: every list is personalised, none is the popularity fallback
        assert row["fallback_rows"] == 0
        reference = rows[("retriever", mode)]
        assert row["p50_ratio"] == pytest.approx(row["p50_ms"] / reference["p50_ms"])


def test_bench_serving_load_mode_answers_every_client_and_refuses_every_bad_payload(workspace: Path) -> None:
    _recsys(
        "bench",
        "serving",
        *SYNTHETIC,
        "bench.mode=load",
        "bench.load_clients=[1,4]",
        "bench.load_seconds=3",
        "bench.single_requests=20",
        "bench.warmup_requests=1",
        "bench.k=5",
        "bench.out_dir=bench_load",
        cwd=workspace,
    )
    [saved] = (workspace / "bench_load").glob("serving-*.json")
    results = json.loads(saved.read_text())
    loads = {(r["model"], r["clients"]): r for r in results["load"]}
    assert set(loads) == {(m, c) for m in ("retriever", "recommender") for c in (1, 4)}
    for row in loads.values():
        assert row["errors"] == 0, row["first_error"]
        assert row["requests"] > 0 and 0 < row["p50_ms"] <= row["p99_ms"]
        assert row["peak_rss_mb"] > 0
    fuzzed = results["fuzz"]
    assert {f["model"] for f in fuzzed} == {"retriever", "recommender"}
    # 15 payloads each; the recommender (which reads user ids) also gets two bad user ids
    assert sum(f["model"] == "retriever" for f in fuzzed) == 15
    assert sum(f["model"] == "recommender" for f in fuzzed) == 17
    for row in fuzzed:
        assert 400 <= row["status"] < 500 and row["message"], row
    assert results["fuzz_not_4xx"] == [] and results["errors"] == 0
