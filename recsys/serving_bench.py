"""``recsys bench serving``: the served two-stage recommender against the served retriever alone.

Both registered models are served the way a user serves them (``mlflow models serve``, one uvicorn worker,
loopback HTTP, JSON) one after the other, and get the same requests: histories of real users of the run's
snapshot (raw item ids, oldest first; the recommender also gets the raw user id). One client sends the
requests back to back (concurrency 1), first ``single_requests`` one-user requests, then ``batch_requests``
requests of ``batch_users`` users, after ``warmup_requests`` untimed ones. Reported per model and mode:
p50 / p99 latency of a request, throughput in users per second, and the ratios against the retriever
measured in the same run (latency: recommender / retriever; throughput: recommender / retriever).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recsys.config import typed
from recsys.console import print_table, step
from recsys.errors import ConfigError
from recsys.paths import RunPaths
from recsys.schema import ITEM_ID, ITEM_IDX, TIMESTAMP, USER_ID, USER_IDX
from recsys.serving import invoke, served, serving
from recsys.serving_load import fuzz, load, post, request_bodies
from recsys.settings import ServingBenchSettings
from recsys.tables import read_arrow
from recsys.tracking.requests import FALLBACK, HISTORY
from recsys.tracking.runs import configure

RECOMMENDER = "recommender"
RETRIEVER = "retriever"
SINGLE = "single"
BATCH = "batch"


@dataclass(frozen=True)
class Latencies:
    model: str
    mode: str
    users_per_request: int
    seconds: list[float]
    fallback_rows: int

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.seconds, 50) * 1000)

    @property
    def p99_ms(self) -> float:
        return float(np.percentile(self.seconds, 99) * 1000)

    @property
    def users_per_s(self) -> float:
        return len(self.seconds) * self.users_per_request / sum(self.seconds)


def user_histories(features: Path, count: int, seed: int) -> pd.DataFrame:
    """``count`` users of the snapshot drawn at random (seeded): raw ``user_id`` and their whole history of
    raw item ids in time order (the requests a live system would send for its known users)."""
    split = read_arrow(features / "split", columns=[USER_IDX, ITEM_IDX, TIMESTAMP]).to_pandas()
    if split.empty:
        raise ConfigError(f"{features / 'split'}: no events to build serving requests from.")
    items = read_arrow(features / "vocab_item").to_pandas()
    users = read_arrow(features / "vocab_user").to_pandas()
    item_id = pd.Series(items[ITEM_ID].astype(str).to_numpy(), index=items[ITEM_IDX].to_numpy())
    user_id = pd.Series(users[USER_ID].astype(str).to_numpy(), index=users[USER_IDX].to_numpy())
    known = np.sort(split[USER_IDX].unique())
    rng = np.random.default_rng(seed)
    picked = rng.choice(known, size=count, replace=count > known.size)
    ordered = split.sort_values([USER_IDX, TIMESTAMP], kind="stable")
    history = ordered.groupby(USER_IDX)[ITEM_IDX].apply(lambda s: item_id[s.to_numpy()].tolist())
    return pd.DataFrame({USER_ID: user_id[picked].tolist(), HISTORY: history[picked].tolist()})


def _payload(rows: pd.DataFrame, with_user: bool, k: int) -> dict[str, Any]:
    columns = [HISTORY, USER_ID] if with_user else [HISTORY]
    return {"dataframe_records": rows[columns].to_dict("records"), "params": {"k": k}}


def _time_requests(
    port: int, requests: list[pd.DataFrame], with_user: bool, k: int, model: str, mode: str
) -> Latencies:
    seconds, fallback = [], 0
    for rows in requests:
        payload = _payload(rows, with_user, k)
        start = time.perf_counter()
        status, answer = invoke(port, payload)
        seconds.append(time.perf_counter() - start)
        if status != 200:
            raise ConfigError(f"bench serving: {model} answered HTTP {status}: {str(answer)[:500]}")
        fallback += sum(bool(p.get(FALLBACK, False)) for p in answer["predictions"])
    return Latencies(model, mode, len(requests[0]), seconds, fallback)


def _measure(
    label: str,
    uri: str,
    tracking_uri: str,
    bench: ServingBenchSettings,
    requests: dict[str, list[pd.DataFrame]],
) -> list[Latencies]:
    with_user = label == RECOMMENDER
    with (
        step(f"serve {uri} and send {sum(len(r) for r in requests.values())} requests"),
        served(uri, tracking_uri, Path.cwd(), workers=bench.workers) as port,
    ):
        for rows in requests["warmup"]:
            invoke(port, _payload(rows, with_user, bench.k))
        return [
            _time_requests(port, requests[mode], with_user, bench.k, label, mode) for mode in (SINGLE, BATCH)
        ]


def _load_and_fuzz(
    label: str, uri: str, tracking_uri: str, bench: ServingBenchSettings, pool: pd.DataFrame
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Fuzz, then each client count of the load mode, against one served model."""
    users = pool[USER_ID].tolist() if label == RECOMMENDER else None
    bodies = request_bodies(pool[HISTORY].tolist(), users, bench.k)
    known_item = str(pool[HISTORY].iloc[0][0])
    with (
        step(f"serve {uri}: fuzz, then {list(bench.load_clients)} clients x {bench.load_seconds:g} s"),
        serving(uri, tracking_uri, Path.cwd(), workers=bench.workers) as server,
    ):
        for body in bodies[: bench.warmup_requests]:
            post(server.port, body, bench.request_timeout_s)
        fuzz_rows = fuzz(server, known_item, label == RECOMMENDER, bench.request_timeout_s)
        fuzzed = [{"model": label, **row} for row in fuzz_rows]
        loads = [
            {
                "model": label,
                **load(server, bodies, clients, bench.load_seconds, bench.request_timeout_s).row(),
            }
            for clients in bench.load_clients
        ]
    return loads, fuzzed


def run_serving_load(cfg: Mapping[str, Any], bench: ServingBenchSettings) -> dict[str, Any]:
    configure(cfg["tracking"])
    tracking_uri = str(cfg["tracking"]["tracking_uri"])
    pool = user_histories(RunPaths.from_cfg(cfg).features, bench.single_requests, bench.seed)
    loads, fuzzed = [], []
    for label, uri in ((RETRIEVER, bench.retriever_uri), (RECOMMENDER, bench.recommender_uri)):
        model_loads, model_fuzz = _load_and_fuzz(label, uri, tracking_uri, bench, pool)
        loads += model_loads
        fuzzed += model_fuzz
    print_table(
        "bench serving: fuzzed payloads (each must get a 4xx with a message)",
        ["model", "payload", "status", "seconds", "4xx + message", "message"],
        [
            (
                f["model"],
                f["payload"],
                str(f["status"]),
                f"{f['seconds']:.2f}",
                str(f["client_error"]),
                f["message"],
            )
            for f in fuzzed
        ],
    )
    print_table(
        f"bench serving: concurrent clients, {bench.load_seconds:g} s each, {bench.workers} uvicorn workers",
        ["model", "clients", "requests", "requests/s", "p50 ms", "p99 ms", "errors", "peak server MB"],
        [
            (
                r["model"],
                str(r["clients"]),
                str(r["requests"]),
                f"{r['requests_per_s']:.1f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                str(r["errors"]),
                f"{r['peak_rss_mb']:.0f}",
            )
            for r in loads
        ],
    )
    single = {r["model"]: r for r in loads if r["clients"] == min(bench.load_clients)}
    timings = [
        {
            "engine": r["model"],
            "step": f"{r['clients']} clients",
            "seconds": r["seconds"],
            "samples_per_s": r["requests_per_s"],
            "ratio": r["requests_per_s"] / single[r["model"]]["requests_per_s"],
        }
        for r in loads
    ]
    settings = {name: getattr(bench, name) for name in bench.__dataclass_fields__}
    return {
        "config": settings,
        "load": loads,
        "fuzz": fuzzed,
        "timings": timings,
        "errors": sum(r["errors"] for r in loads),
        "fuzz_not_4xx": [f"{f['model']}: {f['payload']}" for f in fuzzed if not f["client_error"]],
    }


def run_serving_bench(cfg: Mapping[str, Any]) -> dict[str, Any]:
    bench = typed(ServingBenchSettings, cfg["bench"], "bench")
    if bench.mode == "load":
        return run_serving_load(cfg, bench)
    if min(bench.single_requests, bench.batch_requests, bench.batch_users) < 1:
        raise ConfigError("bench serving: single_requests, batch_requests and batch_users must be >= 1.")
    configure(cfg["tracking"])
    tracking_uri = str(cfg["tracking"]["tracking_uri"])
    features = RunPaths.from_cfg(cfg).features
    pool = user_histories(
        features, bench.single_requests + bench.batch_requests * bench.batch_users, bench.seed
    )
    singles = [pool.iloc[i : i + 1] for i in range(bench.single_requests)]
    start = bench.single_requests
    batches = [
        pool.iloc[start + b * bench.batch_users : start + (b + 1) * bench.batch_users]
        for b in range(bench.batch_requests)
    ]
    requests = {"warmup": singles[: bench.warmup_requests], SINGLE: singles, BATCH: batches}
    measured = {
        label: _measure(label, uri, tracking_uri, bench, requests)
        for label, uri in ((RETRIEVER, bench.retriever_uri), (RECOMMENDER, bench.recommender_uri))
    }
    reference = {m.mode: m for m in measured[RETRIEVER]}
    latency, timings = [], []
    for label, rows in measured.items():
        for m in rows:
            ref = reference[m.mode]
            latency.append(
                {
                    "model": label,
                    "uri": bench.retriever_uri if label == RETRIEVER else bench.recommender_uri,
                    "mode": m.mode,
                    "requests": len(m.seconds),
                    "users_per_request": m.users_per_request,
                    "p50_ms": m.p50_ms,
                    "p99_ms": m.p99_ms,
                    "users_per_s": m.users_per_s,
                    "p50_ratio": m.p50_ms / ref.p50_ms,
                    "p99_ratio": m.p99_ms / ref.p99_ms,
                    "fallback_rows": m.fallback_rows,
                }
            )
            timings.append(
                {
                    "engine": label,
                    "step": f"{m.mode} ({m.users_per_request} user{'s' if m.users_per_request > 1 else ''})",
                    "seconds": sum(m.seconds),
                    "samples_per_s": m.users_per_s,
                    "ratio": m.users_per_s / ref.users_per_s,
                }
            )
    print_table(
        "bench serving: latency per request (one client, back to back)",
        ["model", "mode", "requests", "p50 ms", "p99 ms", "users/s", "p50 vs retriever", "fallback rows"],
        [
            (
                r["model"],
                f"{r['mode']} x{r['users_per_request']}",
                str(r["requests"]),
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['users_per_s']:.1f}",
                f"{r['p50_ratio']:.2f}x",
                str(r["fallback_rows"]),
            )
            for r in latency
        ],
    )
    settings = {name: getattr(bench, name) for name in bench.__dataclass_fields__}
    return {"config": settings, "latency": latency, "timings": timings}
