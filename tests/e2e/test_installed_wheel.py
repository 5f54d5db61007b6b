"""As a new user outside the checkout: the built wheel, installed in a fresh virtualenv, runs the demo
pipeline on the user's own CSV export, described by ``data/mine.yaml`` in their own config folder.

The virtualenv gets only the wheel (``pip install --no-deps``); its dependencies come from this test
environment's site-packages through a ``.pth`` line, which Python does not scan for further ``.pth``
files, so the checkout's editable install stays inactive and ``recsys`` resolves to the installed wheel.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.helpers.raw_files import shop_config, shop_export
from tests.helpers.wheel import REPO, build_wheel

DATE = "2024-03-06"


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 1800) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("installed")
    wheel = build_wheel(work / "dist").path
    venv = work / "venv"
    subprocess.run([sys._base_executable, "-m", "venv", str(venv)], check=True, timeout=300)  # type: ignore[attr-defined]
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    (site / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
        check=True,
        timeout=600,
    )
    return venv


def test_wheel_runs_the_demo_pipeline_on_my_csv(fresh_venv: Path, tmp_path: Path) -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "RECSYS_CONF_DIR", "RECSYS_CONFIG_PATH")
    }
    python = fresh_venv / "bin" / "python"
    env["PYSPARK_PYTHON"] = env["PYSPARK_DRIVER_PYTHON"] = str(python)
    where = _run(
        [str(python), "-c", "import recsys, models; print(recsys.__file__, models.__file__)"], tmp_path, env
    )
    assert all(str(fresh_venv) in path and str(REPO) not in path for path in where.split())

    export = shop_export(tmp_path / "export")
    shop_config(tmp_path / "my-conf", export)
    command = [
        str(fresh_venv / "bin" / "recsys"),
        "pipeline",
        "run",
        "pipeline=demo",
        "data=mine",
        "--config-dir",
        str(tmp_path / "my-conf"),
        f"run.date={DATE}",
        f"paths.root={tmp_path / 'runs'}",
        "trainer=smoke",
    ]
    out = _run(command, tmp_path, env)
    run_folder = tmp_path / "runs" / DATE
    assert f"pipeline demo: run folder {run_folder}" in out
    markers = sorted(p.stem for p in (run_folder / "_markers").glob("*.json"))
    assert {"ingest", "features", "train_dlrm", "train_molar", "rerank_ranker"} <= set(markers), markers
    ingest = json.loads((run_folder / "ingest" / "interactions" / "manifest.json").read_text())
    orders = (export / "orders.csv").read_text().splitlines()
    assert ingest["row_count"] == len(orders) - 1 and ingest["counts"]["distinct_user_id"] == 120
    items = json.loads((run_folder / "ingest" / "items" / "manifest.json").read_text())
    assert items["row_count"] == 80
    assert (run_folder / "report" / "report.html").is_file()
