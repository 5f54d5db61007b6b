"""An MLflow tracking server on a PostgreSQL backend store, for ``tracking=server``.

``python -m recsys.tracking.server --data-dir D`` creates a PostgreSQL cluster in ``D/postgres`` (first
call only), starts it on a loopback port, creates the ``mlflow`` database, and runs ``mlflow server`` with
that store and ``D/artifacts`` as the artifact root (served over HTTP, so clients need no shared disk for
artifacts). It prints the ``MLFLOW_TRACKING_URI`` to export and stops both servers on Ctrl-C. The test
suite starts the same pair through :func:`tracking_server`.

PostgreSQL refuses to run as root: under root the cluster belongs to an unprivileged account
(``--pg-user``, default ``nobody``) and its commands run through ``runuser``.
"""

from __future__ import annotations

import argparse
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from recsys.errors import ConfigError
from recsys.serving import free_port

DATABASE = "mlflow"
ROLE = "recsys"
START_TIMEOUT_S = 120
POLL_S = 0.5
_PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def postgres_binary(name: str) -> str | None:
    """``initdb``/``pg_ctl`` on PATH, else in Debian's ``/usr/lib/postgresql/<version>/bin``."""
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/").glob(_PG_BIN_GLOB.lstrip("/")), reverse=True):
        if (folder / name).is_file():
            return str(folder / name)
    return None


def missing_postgres() -> str | None:
    """Why a PostgreSQL server cannot be started here, or ``None`` when it can."""
    for name in ("initdb", "pg_ctl"):
        if postgres_binary(name) is None:
            return f"PostgreSQL's {name} is not installed (Debian: apt-get install postgresql)"
    try:
        import psycopg2  # noqa: F401
    except ModuleNotFoundError:
        return "psycopg2 is not installed (pip install 'recsys-pipelines[server]')"
    return None


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL cluster: ``uri`` is the SQLAlchemy URL of its ``mlflow`` database."""

    data: Path
    port: int
    user: str | None

    @property
    def uri(self) -> str:
        # The driver named: SQLAlchemy's default PostgreSQL driver is psycopg 3, not the psycopg2 we ship.
        return f"postgresql+psycopg2://{ROLE}@127.0.0.1:{self.port}/{DATABASE}"


def _as_owner(user: str | None, command: list[str]) -> list[str]:
    return command if user is None else ["runuser", "-u", user, "--", *command]


def _run(user: str | None, command: list[str], what: str) -> None:
    done = subprocess.run(_as_owner(user, command), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ConfigError(
            f"{what} failed ({' '.join(command)}): {done.stderr.strip() or done.stdout.strip()}"
        )


def start_postgres(data: Path, port: int, user: str = "nobody") -> Postgres:
    """Create (first time) and start a cluster in ``data`` listening on 127.0.0.1:``port`` only."""
    owner = user if os.geteuid() == 0 else None
    initdb, pg_ctl = postgres_binary("initdb"), postgres_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        raise ConfigError(str(missing_postgres()))
    if not (data / "PG_VERSION").is_file():
        data.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            entry = pwd.getpwnam(owner)
            os.chown(data, entry.pw_uid, entry.pw_gid)
        data.chmod(0o700)
        _run(owner, [initdb, "-D", str(data), "-U", ROLE, "--auth=trust", "-E", "UTF8"], "initdb")
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    _run(
        owner,
        [pg_ctl, "-D", str(data), "-l", str(data / "server.log"), "-o", options, "-w", "start"],
        "pg_ctl",
    )
    server = Postgres(data, port, owner)
    _create_database(server)
    return server


def _create_database(server: Postgres) -> None:
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=server.port, user=ROLE, dbname="postgres")
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
            if cursor.fetchone() is None:
                cursor.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        connection.close()


def stop_postgres(server: Postgres) -> None:
    pg_ctl = postgres_binary("pg_ctl")
    assert pg_ctl is not None
    _run(server.user, [pg_ctl, "-D", str(server.data), "-m", "fast", "-w", "stop"], "pg_ctl stop")


def start_mlflow(backend_uri: str, artifacts: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``mlflow server`` on 127.0.0.1:``port``; returns once it answers ``/health``."""
    artifacts.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [
        str(mlflow) if mlflow.is_file() else "mlflow",
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ConfigError(f"mlflow server exited with {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return process
        except OSError:
            pass
        time.sleep(POLL_S)
    stop_mlflow(process)
    raise ConfigError(f"mlflow server did not answer on port {port} within {START_TIMEOUT_S} s; see {log}")


def stop_mlflow(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextmanager
def tracking_server(data_dir: Path, port: int | None = None, user: str = "nobody") -> Iterator[str]:
    """PostgreSQL + ``mlflow server`` for the block; yields the tracking URI."""
    database = start_postgres(data_dir / "postgres", free_port(), user)
    try:
        port = port or free_port()
        server = start_mlflow(database.uri, data_dir / "artifacts", port, data_dir / "mlflow-server.log")
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_mlflow(server)
    finally:
        stop_postgres(database)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recsys.tracking.server", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--data-dir", type=Path, required=True, help="PostgreSQL cluster and artifacts")
    parser.add_argument("--port", type=int, default=5000, help="the MLflow server's port (default 5000)")
    parser.add_argument("--pg-user", default="nobody", help="owner of the cluster when run as root")
    args = parser.parse_args(argv)
    why = missing_postgres()
    if why is not None:
        print(f"cannot start the tracking server: {why}", file=sys.stderr)
        return 2
    with tracking_server(args.data_dir.resolve(), args.port, args.pg_user) as uri:
        print(
            f"MLflow tracking server on PostgreSQL is up. In the shells that run recsys:\n"
            f"  export MLFLOW_TRACKING_URI={uri}\n  recsys pipeline run pipeline=daily tracking=server\n"
            "Ctrl-C stops it.",
            flush=True,
        )
        with suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
