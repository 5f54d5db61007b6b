"""``recsys bench serving bench.mode=load``: a served model under concurrent clients, and bad payloads.

Load: for each client count (1, 8, 32 by default) that many threads post requests back to back to one
``mlflow models serve`` on loopback for a fixed time, each with its own connection and a per-request
timeout, then stop by themselves. Reported per count: requests, throughput, p50/p99 latency, errors
(any non-200 answer, timeout or connection failure) and the server's peak resident memory (its whole
process group, sampled during the run).

Fuzz: payloads a broken or hostile client sends (wrong types, missing fields, unicode and very long ids,
a 10,000-item history, too many rows, an empty body, invalid JSON, a wrong content type). Each must get a
4xx with a message within the timeout; a 500 or a hang is a defect.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from recsys.serving import LOOPBACK, Server, server_rss_bytes
from recsys.tracking.requests import HISTORY, MAX_HISTORY_ITEMS, MAX_ID_CHARS, MAX_ROWS, USER_ID

JSON = "application/json"
MEMORY_SAMPLE_S = 0.25


def post(port: int, body: bytes, timeout_s: float, content_type: str = JSON) -> tuple[int, bytes]:
    """POST raw bytes to /invocations on a fresh connection: ``(status, body)``."""
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout_s)
    try:
        connection.request("POST", "/invocations", body=body, headers={"Content-Type": content_type})
        reply = connection.getresponse()
        return reply.status, reply.read()
    finally:
        connection.close()


@dataclass(frozen=True)
class LoadResult:
    clients: int
    seconds: float
    latencies: list[float]
    errors: int
    first_error: str
    peak_rss_bytes: int

    @property
    def requests(self) -> int:
        return len(self.latencies) + self.errors

    def row(self) -> dict[str, Any]:
        ok = np.asarray(self.latencies) * 1000 if self.latencies else np.asarray([np.nan])
        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 2),
            "requests": self.requests,
            "requests_per_s": len(self.latencies) / self.seconds,
            "p50_ms": float(np.percentile(ok, 50)),
            "p99_ms": float(np.percentile(ok, 99)),
            "errors": self.errors,
            "first_error": self.first_error,
            "peak_rss_mb": self.peak_rss_bytes / 2**20,
        }


def _sample_memory(server: Server, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], server_rss_bytes(server))
        stop.wait(MEMORY_SAMPLE_S)


def load(server: Server, payloads: list[bytes], clients: int, seconds: float, timeout_s: float) -> LoadResult:
    """``clients`` threads posting ``payloads`` round robin (each from its own offset) for ``seconds``."""
    deadline = time.monotonic() + seconds
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]

    def client(index: int) -> None:
        sent = index
        while time.monotonic() < deadline:
            body = payloads[sent % len(payloads)]
            sent += clients
            start = time.perf_counter()
            try:
                status, answer = post(server.port, body, timeout_s)
            except OSError as exc:
                errors[index].append(f"{type(exc).__name__}: {exc}")
                continue
            if status == 200:
                latencies[index].append(time.perf_counter() - start)
            else:
                errors[index].append(f"HTTP {status}: {answer[:200]!r}")

    stop, peak = threading.Event(), [server_rss_bytes(server)]
    sampler = threading.Thread(target=_sample_memory, args=(server, stop, peak), daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(seconds + timeout_s + 5)
    elapsed = time.monotonic() - start
    stop.set()
    sampler.join()
    failures = [e for per_client in errors for e in per_client]
    return LoadResult(
        clients,
        elapsed,
        [s for per_client in latencies for s in per_client],
        len(failures),
        failures[0] if failures else "",
        peak[0],
    )


def _records(rows: list[dict[str, Any]]) -> bytes:
    return json.dumps({"dataframe_records": rows}).encode()


def fuzz_payloads(known_item: str, with_user: bool) -> dict[str, tuple[bytes, str]]:
    """Name -> (body, content type) of every bad request the served models must refuse with a 4xx.

    ``with_user``: the model takes a ``user_id`` column (the recommender); a model whose signature has no
    such column never sees it (MLflow's schema enforcement drops undeclared columns), so it gets no
    user-id payload."""
    long_id = "x" * (MAX_ID_CHARS * 40)
    unicode_long = "é😀" * MAX_ID_CHARS
    payloads = {
        "empty body": (b"", JSON),
        "invalid JSON": (b'{"dataframe_records": [{"history": ["1"', JSON),
        "JSON that is not a table": (b'"just a string"', JSON),
        "wrong content type": (b"history\n1", "text/plain"),
        "no history column": (_records([{"items": [known_item]}]), JSON),
        "history is a string": (_records([{HISTORY: known_item}]), JSON),
        "history is a number": (_records([{HISTORY: 17}]), JSON),
        "history is an object": (_records([{HISTORY: {"a": 1}}]), JSON),
        "ids are lists": (_records([{HISTORY: [[known_item]]}]), JSON),
        "very long item id": (_records([{HISTORY: [known_item, long_id]}]), JSON),
        "very long unicode item id": (_records([{HISTORY: [unicode_long]}]), JSON),
        "10,000-item history": (_records([{HISTORY: [known_item] * (MAX_HISTORY_ITEMS * 10)}]), JSON),
        "too many rows": (_records([{HISTORY: [known_item]}] * (MAX_ROWS + 1)), JSON),
        "k is not a number": (
            json.dumps({"dataframe_records": [{HISTORY: [known_item]}], "params": {"k": "ten"}}).encode(),
            JSON,
        ),
        "k is zero": (
            json.dumps({"dataframe_records": [{HISTORY: [known_item]}], "params": {"k": 0}}).encode(),
            JSON,
        ),
    }
    if with_user:
        payloads["very long user id"] = (_records([{HISTORY: [known_item], USER_ID: long_id}]), JSON)
        payloads["user id is a list"] = (_records([{HISTORY: [known_item], USER_ID: [1, 2]}]), JSON)
    return payloads


def fuzz(server: Server, known_item: str, with_user: bool, timeout_s: float) -> list[dict[str, Any]]:
    """Every fuzz payload once: status, the start of the message, seconds, and whether it was a 4xx."""
    rows = []
    for name, (body, content_type) in fuzz_payloads(known_item, with_user).items():
        start = time.perf_counter()
        try:
            status, answer = post(server.port, body, timeout_s, content_type)
            message = _message(answer)
        except OSError as exc:
            status, message = 0, f"no answer: {type(exc).__name__}: {exc}"
        rows.append(
            {
                "payload": name,
                "status": status,
                "seconds": time.perf_counter() - start,
                "client_error": 400 <= status < 500 and bool(message),
                "message": message[:160],
            }
        )
    return rows


def _message(answer: bytes) -> str:
    try:
        decoded = json.loads(answer)
    except ValueError:
        return answer.decode(errors="replace").strip()
    if isinstance(decoded, dict):
        return str(decoded.get("message") or decoded.get("error_code") or decoded)
    return str(decoded)


def request_bodies(histories: list[list[str]], users: list[str] | None, k: int) -> list[bytes]:
    """One single-user request body per history (with its user id when ``users`` is given)."""
    bodies = []
    for index, history in enumerate(histories):
        row: dict[str, Any] = {HISTORY: history[-MAX_HISTORY_ITEMS:]}
        if users is not None:
            row[USER_ID] = users[index]
        bodies.append(json.dumps({"dataframe_records": [row], "params": {"k": k}}).encode())
    return bodies
