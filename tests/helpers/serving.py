"""``mlflow models serve`` on loopback for the serving tests: start a registered model, wait for /ping, post
JSON to /invocations, stop it."""

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

import pytest

SERVE_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(model_uri: str, tracking_uri: str, cwd: Path) -> Iterator[int]:
    """Serve ``model_uri`` with the test interpreter's environment; yields the port once /ping answers."""
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
        [*command, "-h", "127.0.0.1", "-p", str(port)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    output = server.stdout.read() if server.stdout else ""
                    pytest.fail(f"mlflow models serve did not come up: {output[-2000:]}")
                time.sleep(1)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def invoke(port: int, payload: dict[str, Any]) -> tuple[int, Any]:
    """POST ``payload`` to /invocations: ``(HTTP status, decoded JSON body)``, error statuses included."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
