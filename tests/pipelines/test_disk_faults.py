"""A full disk and a read-only folder where a stage publishes: one clear line, exit 2, nothing published.

Real filesystems, not patched ``open``: a tmpfs mounted over the stage's output folder, size-limited (full
disk) or read-only, so the error comes from the kernel through whichever layer writes (PyArrow for an
evaluation, Spark's JVM for the features). Mounting needs root (CAP_SYS_ADMIN); elsewhere the tests say
they were skipped and why.
"""

from __future__ import annotations

import math
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.pipelines.conftest import DATA, SPARK, Reference

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DATE = "1998-04-23"
TIMEOUT_S = 600
PAGE = 4096
# Room left beside the copied inputs of the features stage: its locks and scratch fit, its output does not.
SPARE_PAGES = 32


@contextmanager
def _tmpfs(target: Path, options: str) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited or read-only filesystem needs root (CAP_SYS_ADMIN)")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "recsys-test", str(target)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def _pages(folder: Path) -> int:
    return sum(math.ceil(p.stat().st_size / PAGE) for p in folder.rglob("*") if p.is_file())


def _recsys(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "recsys"
    return subprocess.run(
        [str(exe), *args, *DATA, f"paths.root={root}", f"run.date={DATE}"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env={**os.environ, "COLUMNS": "200"},
    )


def _assert_one_clear_line(done: subprocess.CompletedProcess[str], condition: str) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-4000:]
    [line] = [line for line in output.splitlines() if " failed: " in line]
    assert line.split(" failed: ", 1)[1].startswith(condition), line
    assert "paths.root" in line and "Nothing half-written was published" in line, line
    assert "This is a bug" not in output


def _assert_nothing_left(folder: Path, root: Path) -> None:
    assert not [p for p in folder.rglob("*") if p.name != "lost+found"], "something was written"
    with sqlite3.connect(f"file:{root / 'mlflow.db'}?mode=ro", uri=True) as connection:
        statuses = {s for (s,) in connection.execute("SELECT status FROM runs")}
    assert "RUNNING" not in statuses


@pytest.mark.parametrize(
    ("options", "condition"), [("size=8k", "disk full"), ("ro,size=1m", "read-only folder")]
)
def test_evaluation_on_a_full_or_read_only_disk_fails_in_one_line_and_publishes_nothing(
    tmp_path: Path, reference_run: Reference, options: str, condition: str
) -> None:
    root = tmp_path / "runs"
    for stage in ("ingest", "features"):
        shutil.copytree(reference_run.root / DATE / stage, root / DATE / stage)
    evaluate = root / DATE / "evaluate"
    with _tmpfs(evaluate, options):
        done = _recsys(root, "evaluate", "model=mostpop")
        _assert_one_clear_line(done, condition)
        _assert_nothing_left(evaluate, root)


@pytest.mark.spark
def test_spark_features_on_a_full_disk_fail_in_one_line_and_publish_nothing(
    tmp_path: Path, reference_run: Reference
) -> None:
    root = tmp_path / "runs"
    run_folder = root / DATE
    ingest = reference_run.root / DATE / "ingest"
    with _tmpfs(run_folder, f"size={(_pages(ingest) + SPARE_PAGES) * PAGE}"):
        shutil.copytree(ingest, run_folder / "ingest")
        done = _recsys(root, "features", *SPARK)
        _assert_one_clear_line(done, "disk full")
        assert not (run_folder / "features").exists()
        assert not list(run_folder.glob(".features.tmp-*"))
