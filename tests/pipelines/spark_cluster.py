"""A Spark standalone cluster (1 master, 1 worker) on loopback, from the scripts shipped in pyspark's wheel.

The pyspark 4.3 wheel ships ``sbin/spark-daemon.sh`` but not ``start-master.sh`` / ``start-worker.sh``
(``ls $(python -c 'import pyspark,os;print(os.path.dirname(pyspark.__file__))')/sbin``: spark-config.sh,
spark-daemon.sh, start/stop-connect-server.sh, start/stop-history-server.sh). In a Spark distribution
``start-master.sh`` is a thin wrapper that runs ``spark-daemon.sh start org.apache.spark.deploy.master.Master
1 --host H --port P --webui-port W`` (and ``start-worker.sh`` the same for ``...worker.Worker``), so this
module runs exactly that command with ``SPARK_HOME`` = the pyspark package folder. Pid files, logs and the
worker's work folder go under a temporary folder; ``stop`` is ``spark-daemon.sh stop`` for both.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyspark

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
# The worker offers both cores of the test machine and 1 GiB (the default executor memory).
WORKER_CORES, WORKER_MEMORY = 2, "1g"
READY_TIMEOUT_S = 120


@dataclass(frozen=True)
class StandaloneCluster:
    master_url: str
    folder: Path

    def master_log(self) -> str:
        return "".join(p.read_text() for p in (self.folder / "logs").glob(f"*{MASTER_CLASS}*.out"))

    def worker_log(self) -> str:
        return "".join(p.read_text() for p in (self.folder / "logs").glob(f"*{WORKER_CLASS}*.out"))

    def applications(self) -> list[Path]:
        """The worker's application folders (one per app that ran executors on it)."""
        return sorted((self.folder / "work").glob("app-*"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def spark_home() -> Path:
    return Path(pyspark.__file__).parent


def _daemon(env: dict[str, str], *args: str) -> None:
    script = spark_home() / "sbin" / "spark-daemon.sh"
    subprocess.run(["bash", str(script), *args], env=env, check=True, capture_output=True, timeout=60)


@contextmanager
def standalone_cluster(folder: Path) -> Iterator[StandaloneCluster]:
    """Start master + worker on 127.0.0.1 (free ports), yield once the worker has registered, stop both."""
    folder.mkdir(parents=True, exist_ok=True)
    port, ui_port, worker_ui = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "SPARK_PID_DIR": str(folder / "pids"),
        "SPARK_LOG_DIR": str(folder / "logs"),
        "SPARK_IDENT_STRING": f"recsys-test-{os.getpid()}",
        "SPARK_LOCAL_IP": HOST,
        # The REST submission server would take the fixed port 6066; nothing here needs it.
        "SPARK_MASTER_OPTS": "-Dspark.master.rest.enabled=false",
    }
    cluster = StandaloneCluster(f"spark://{HOST}:{port}", folder)
    started: list[str] = []
    try:
        _daemon(
            env, "start", MASTER_CLASS, "1", "--host", HOST, "--port", str(port), "--webui-port", str(ui_port)
        )
        started.append(MASTER_CLASS)
        worker_args = ["--host", HOST, "--webui-port", str(worker_ui), "--cores", str(WORKER_CORES)]
        worker_args += ["--memory", WORKER_MEMORY, "--work-dir", str(folder / "work"), cluster.master_url]
        _daemon(env, "start", WORKER_CLASS, "1", *worker_args)
        started.append(WORKER_CLASS)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "Successfully registered with master" not in cluster.worker_log():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"worker did not register in {READY_TIMEOUT_S}s:\n{cluster.worker_log()[-3000:]}"
                )
            time.sleep(0.5)
        yield cluster
    finally:
        for name in reversed(started):
            _daemon(env, "stop", name, "1")
