"""What a scheduler does on first use, against the default SQLite store and against ``tracking=server``
(an MLflow server on PostgreSQL that the test starts): independent stage commands started at once on a
fresh root (no MLflow store yet), the same stage started twice, concurrent promotions of one model.

Three evaluations and two trainings run in parallel on the shared reference run's features, with the
SASRec training started a second time and once more on another date: all exit 0, the evaluations' metrics
equal the reference run's (the same stages, one after another), the trainings' test metrics equal those of
the same two commands run one after another afterwards, exactly one SASRec version is champion and it is
the best, and no MLflow run is left ``RUNNING``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from models.sequential.train import PROMOTION_METRIC
from recsys.tracking.registry import CHAMPION
from recsys.tracking.server import missing_postgres, tracking_server
from tests.pipelines.compare import metric_table
from tests.pipelines.conftest import DATA, Reference

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DATE = "1998-04-23"
OTHER_DATE = "1998-04-24"
TIMEOUT_S = 900
EVALUATED = ("mostpop", "ease", "puresvd")
TRAINED = {
    # Started twice at once below; with seven processes on the machine's cores the one that waits may wait
    # longer than the default minute (locks are not part of the config hash: the metrics do not change).
    "sasrec": [
        "model=sasrec",
        "model.max_epochs=2",
        "model.hidden_dim=32",
        "trainer=smoke",
        "locks.wait_s=900",
    ],
    "dlrm": ["model=dlrm", "model.epochs=1", "trainer=smoke"],
}


@dataclass(frozen=True)
class Store:
    """Where the commands track: overrides and environment for them, the URI for the test's client."""

    overrides: tuple[str, ...]
    env: dict[str, str]
    uri: str | None  # None: the SQLite store under paths.root

    def client(self, root: Path) -> MlflowClient:
        return MlflowClient(self.uri or f"sqlite:///{root / 'mlflow.db'}")


@pytest.fixture(scope="module")
def postgres_server() -> Iterator[str]:
    why = missing_postgres()
    if why is not None:
        pytest.skip(f"tracking=server not tested here: {why}")
    # Outside pytest's temp folders: PostgreSQL runs as an unprivileged user, who must reach its data.
    data = Path(tempfile.mkdtemp(prefix="recsys-tracking-"))
    data.chmod(0o755)
    try:
        with tracking_server(data) as uri:
            yield uri
    finally:
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(params=["sqlite", "server"])
def store(request: pytest.FixtureRequest) -> Store:
    if request.param == "sqlite":
        return Store((), {}, None)
    uri = request.getfixturevalue("postgres_server")
    return Store(("tracking=server",), {"MLFLOW_TRACKING_URI": uri}, uri)


def _fresh_root(tmp_path: Path, reference: Reference, dates: tuple[str, ...] = (DATE,)) -> Path:
    """A root holding only the reference run's ingest and features (copied under every date)."""
    root = tmp_path / "runs"
    for date in dates:
        for stage in ("ingest", "features"):
            shutil.copytree(reference.root / DATE / stage, root / date / stage)
    (tmp_path / "logs").mkdir()
    return root


def _start(
    root: Path, store: Store, name: str, verb: str, *overrides: str, date: str = DATE
) -> subprocess.Popen[bytes]:
    exe = Path(sys.executable).parent / "recsys"
    command = [str(exe), verb, *DATA, f"paths.root={root}", f"run.date={date}", *store.overrides, *overrides]
    log = (root.parent / "logs" / f"{name}.log").open("wb")
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200", **store.env}
    )


def _all_exit_0(root: Path, started: dict[str, subprocess.Popen[bytes]]) -> None:
    for name, process in started.items():
        process.wait(timeout=TIMEOUT_S)
        output = (root.parent / "logs" / f"{name}.log").read_text(errors="replace")
        assert process.returncode == 0, f"{name}:\n{output[-4000:]}"
        assert "This is a bug" not in output, name


def _test_metrics(root: Path, store: Store, name: str) -> dict[str, float]:
    """The test metrics tracked for the train stage whose summary table is in log ``name``."""
    log = (root.parent / "logs" / f"{name}.log").read_text(errors="replace")
    (run_id,) = re.findall(r"│ train │ ([0-9a-f]{32}) ", log)
    metrics = store.client(root).get_run(run_id).data.metrics
    return {k: v for k, v in metrics.items() if k.startswith("test/")}


def _statuses(root: Path, store: Store) -> set[str]:
    client = store.client(root)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {run.info.status for run in client.search_runs(experiments, max_results=1000)}


def test_parallel_stages_on_a_fresh_root_equal_the_same_stages_run_in_turn(
    tmp_path: Path, reference_run: Reference, store: Store
) -> None:
    root = _fresh_root(tmp_path, reference_run, (DATE, OTHER_DATE))
    started = {
        f"evaluate-{m}": _start(root, store, f"evaluate-{m}", "evaluate", f"model={m}") for m in EVALUATED
    }
    started |= {f"train-{m}": _start(root, store, f"train-{m}", "train", *o) for m, o in TRAINED.items()}
    # The same output twice at once: the second waits for the first (locks.wait_s), neither fails; the same
    # model on another snapshot at the same time: three concurrent promotions of one registered model.
    sasrec = TRAINED["sasrec"]
    started["twice-sasrec"] = _start(root, store, "twice-sasrec", "train", *sasrec)
    started["other-sasrec"] = _start(root, store, "other-sasrec", "train", *sasrec, date=OTHER_DATE)
    _all_exit_0(root, started)
    assert (root / "mlflow.db").exists() == (store.uri is None)
    for date in (DATE, OTHER_DATE):
        assert not list((root / date / "train").glob(".sasrec.*"))  # no staging or replaced folder left
    _assert_one_consistent_champion(store.client(root), "recsys-sequential", 3)

    for model in EVALUATED:
        pd.testing.assert_frame_equal(
            metric_table(root / DATE / "evaluate" / model),
            metric_table(reference_run.root / DATE / "evaluate" / model),
            rtol=1e-6,
        )
    for model, overrides in TRAINED.items():
        _all_exit_0(root, {f"again-{model}": _start(root, store, f"again-{model}", "train", *overrides)})
        parallel, in_turn = (
            _test_metrics(root, store, f"train-{model}"),
            _test_metrics(root, store, f"again-{model}"),
        )
        assert parallel and parallel.keys() == in_turn.keys(), model
        for key, value in parallel.items():
            # nan_ok: a metric undefined on this split (GAUC without a user of both classes) stays NaN.
            assert in_turn[key] == pytest.approx(value, rel=1e-6, abs=1e-9, nan_ok=True), (model, key)
    assert _statuses(root, store) == {"FINISHED"}


def _assert_one_consistent_champion(client: MlflowClient, name: str, count: int) -> None:
    """Promotions ran one at a time: the first compared with nothing, each later one with the champion the
    one before it left, so the champion is the best version (the earliest among equals)."""
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == count
    metric = {v.version: client.get_run(str(v.run_id)).data.metrics[PROMOTION_METRIC] for v in versions}
    reasons = {v.version: client.get_model_version(name, v.version).tags["promotion"] for v in versions}
    champion = client.get_model_version_by_alias(name, CHAMPION).version
    first = min(reasons, key=int)
    assert reasons[first] == "no champion yet"
    assert all(reasons[v] != "no champion yet" for v in reasons if v != first)
    assert metric[champion] == max(metric.values())
