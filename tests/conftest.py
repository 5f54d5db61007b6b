"""Shared fixtures: one local SparkSession for the whole run, configs composed like the CLI does."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from features.session import build_session
from recsys.config import compose, to_plain

_MARKERS_BY_FOLDER = {"features": "spark", "e2e": "e2e"}

# A trainer run inside the test process (Lightning) writes its rendezvous into os.environ, and its process
# group keeps that port open; a later test's `recsys train` subprocess inherits MASTER_PORT and fails with
# EADDRINUSE. So every test ends with these variables as they were when the session started.
_RENDEZVOUS_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK")
_SESSION_RENDEZVOUS = {name: os.environ.get(name) for name in _RENDEZVOUS_VARIABLES}


@pytest.fixture(autouse=True)
def _session_rendezvous() -> Iterator[None]:
    yield
    for name, value in _SESSION_RENDEZVOUS.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers follow the folder a test lives in, so `-m "not e2e"` works without decorating each test."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        for folder, marker in _MARKERS_BY_FOLDER.items():
            if folder in parts:
                item.add_marker(getattr(pytest.mark, marker))


def spark_overrides(tmp_root: Path) -> list[str]:
    return [
        f"paths.root={tmp_root}",
        "spark.master='local[2]'",
        "spark.shuffle_partitions=2",
        "spark.driver_memory=2g",
    ]


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    os.environ["PYSPARK_PYTHON"] = sys.executable
    local_dir = tmp_path_factory.mktemp("spark-local")
    cfg = to_plain(compose([*spark_overrides(local_dir), f"spark.local_dir={local_dir}"]))
    session = build_session(cfg["spark"])
    yield session
    session.stop()


@pytest.fixture
def make_cfg(tmp_path: Path, spark: SparkSession) -> Any:
    """``make_cfg("data=...", ...)`` -> config rooted in this test's tmp_path (Spark started)."""

    def _make(*overrides: str, root: Path | None = None) -> dict[str, Any]:
        return to_plain(compose([*spark_overrides(root or tmp_path / "runs"), *overrides]))

    return _make
