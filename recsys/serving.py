"""Registered models behind ``mlflow models serve`` on loopback: start one, wait until it answers, post JSON.

This is how a user serves a champion (``mlflow models serve -m models:/<name>@champion``), so the serving
tests and ``recsys bench serving`` go through the same process, HTTP and JSON path as production traffic
instead of calling ``predict`` in-process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from recsys.errors import RecsysError

LOOPBACK = "127.0.0.1"
PING_INTERVAL_S = 1.0


class ServingError(RecsysError):
    """``mlflow models serve`` exited or did not answer /ping in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Server:
    """A running ``mlflow models serve``: its port and the pid that leads its process group (the server
    and its uvicorn workers: what :func:`server_rss_bytes` sums)."""

    port: int
    pid: int


def server_rss_bytes(server: Server) -> int:
    """Resident memory of every process in the server's process group (Linux ``/proc``)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == server.pid:  # field 5 of stat: the process group id
                total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24: rss in pages
    return total


@contextmanager
def serving(
    model_uri: str,
    tracking_uri: str,
    cwd: Path,
    *,
    workers: int = 1,
    start_timeout_s: float = 120.0,
    env_manager: str = "local",
    environment: Path | None = None,
) -> Iterator[Server]:
    """Serve ``model_uri``; yields the server once /ping answers and stops it on exit.

    ``env_manager="local"`` serves with this interpreter's environment; ``"virtualenv"`` lets MLflow build
    the model's own environment from its requirements first (pyenv for its Python, then pip: minutes the
    first time, reused afterwards from ``~/.mlflow/envs``), so ``start_timeout_s`` must cover the build.
    ``environment``: the virtualenv whose ``mlflow`` serves (default: this interpreter's).
    """
    port = free_port()
    bin_dir = environment / "bin" if environment is not None else Path(sys.executable).parent
    # `mlflow models serve --env-manager local` starts `uvicorn` from PATH: the venv must be on it.
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("PYTHONPATH", None)
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", env_manager]
    # Output to a file, not a pipe: an environment build prints more than a pipe holds unread.
    with tempfile.TemporaryFile(mode="w+") as log:
        server = subprocess.Popen(
            [*command, "-h", LOOPBACK, "-p", str(port), "-w", str(workers)],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
            # Its own process group: the server's workers (and, with virtualenv, the activating shell's
            # children) stop with it.
            start_new_session=True,
        )
        try:
            _wait_for_ping(server, port, start_timeout_s, model_uri, log)
            yield Server(port, server.pid)
        finally:
            _stop(server, signal.SIGTERM)


@contextmanager
def served(model_uri: str, tracking_uri: str, cwd: Path, **options: Any) -> Iterator[int]:
    """:func:`serving`, yielding only the port."""
    with serving(model_uri, tracking_uri, cwd, **options) as server:
        yield server.port


def _wait_for_ping(
    server: subprocess.Popen[str], port: int, timeout_s: float, model_uri: str, log: IO[str]
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{port}/ping", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                _stop(server, signal.SIGKILL)
                log.seek(0)
                raise ServingError(
                    f"mlflow models serve -m {model_uri} did not answer /ping within "
                    f"{timeout_s:.0f}s; its output ends with:\n{log.read()[-2000:]}"
                ) from None
            time.sleep(PING_INTERVAL_S)


def _stop(server: subprocess.Popen[str], sig: signal.Signals) -> None:
    """Signal the server's whole process group, then make sure it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, sig)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
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
