"""Registered models behind ``mlflow models serve`` on loopback: start one, wait until it answers, post JSON.

This is how a user serves a champion (``mlflow models serve -m models:/<name>@champion``), so the serving
tests and ``recsys bench serving`` go through the same process, HTTP and JSON path as production traffic
instead of calling ``predict`` in-process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from recsys.errors import RecsysError

LOOPBACK = "127.0.0.1"
PING_INTERVAL_S = 1.0


class ServingError(RecsysError):
    """``mlflow models serve`` exited or did not answer /ping in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@contextmanager
def served(
    model_uri: str, tracking_uri: str, cwd: Path, *, workers: int = 1, start_timeout_s: float = 120.0
) -> Iterator[int]:
    """Serve ``model_uri`` with this interpreter's environment (``--env-manager local``); yields the port
    once /ping answers and stops the server on exit."""
    port = free_port()
    bin_dir = Path(sys.executable).parent
    # `mlflow models serve --env-manager local` starts `uvicorn` from PATH: the venv must be on it.
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    server = subprocess.Popen(
        [*command, "-h", LOOPBACK, "-p", str(port), "-w", str(workers)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    output = server.stdout.read() if server.stdout else ""
                    raise ServingError(
                        f"mlflow models serve -m {model_uri} did not answer /ping within "
                        f"{start_timeout_s:.0f}s; its output ends with:\n{output[-2000:]}"
                    ) from None
                time.sleep(PING_INTERVAL_S)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)


def invoke(port: int, payload: dict[str, Any], timeout_s: float = 60.0) -> tuple[int, Any]:
    """POST ``payload`` to /invocations: ``(HTTP status, decoded JSON body)``, error statuses included."""
    request = urllib.request.Request(
        f"http://{LOOPBACK}:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
