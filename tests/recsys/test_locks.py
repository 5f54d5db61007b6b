"""Stage locks between processes: a second producer of the same output waits, then refuses naming the
holder; a publisher waits for the readers of the output it replaces; a killed holder frees its locks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from recsys import locks
from recsys.manifest import publish_atomically
from recsys.paths import unit_of

DATE = "2024-03-06"


@contextmanager
def held_elsewhere(kind: str, folder: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``locks.<kind>(folder)`` until the block ends (then it is killed)."""
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from recsys import locks
        with locks.{kind}(Path({str(folder)!r})):
            print("held", flush=True)
            sys.stdin.read()
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()


@pytest.fixture(autouse=True)
def quick_waits() -> Iterator[None]:
    locks.configure({"wait_s": 0.5, "publish_wait_s": 0.5, "poll_s": 0.05})
    yield
    locks.configure(None)


def test_units_follow_the_run_folder_layout(tmp_path: Path) -> None:
    run = tmp_path / DATE
    assert unit_of(run / "features" / "split") == (run, "features")
    assert unit_of(run / "evaluate" / "ease" / "metrics") == (run, "evaluate/ease")
    assert unit_of(run / "train" / "sasrec") == (run, "train/sasrec")
    assert unit_of(run / "report") == (run, "report")
    for outside in (run / "_work" / "x", run / "evaluate", tmp_path / "elsewhere"):
        assert unit_of(outside) is None


def test_a_second_producer_refuses_naming_the_holder(tmp_path: Path) -> None:
    folder = tmp_path / DATE / "evaluate" / "ease"
    with (
        held_elsewhere("writing", folder) as holder,
        pytest.raises(locks.LockTimeoutError) as error,
        locks.writing(folder),
    ):
        pass
    message = str(error.value)
    assert f"pid {holder.pid}" in message and "evaluate/ease" in message and "locks.wait_s" in message
    # Released with its holder: the lock is free again.
    with locks.writing(folder):
        pass


def test_independent_outputs_lock_independently(tmp_path: Path) -> None:
    run = tmp_path / DATE
    with (
        held_elsewhere("writing", run / "evaluate" / "ease"),
        locks.stage_locks([run / "evaluate" / "mostpop"], [run / "features" / "split"]),
    ):
        pass


def test_a_waiting_producer_goes_on_when_the_holder_is_killed(tmp_path: Path) -> None:
    folder = tmp_path / DATE / "train" / "sasrec"
    locks.configure({"wait_s": 30, "publish_wait_s": 30, "poll_s": 0.05})
    with held_elsewhere("writing", folder) as holder:
        start = time.monotonic()
        killer = subprocess.Popen(["sh", "-c", f"sleep 1; kill -9 {holder.pid}"])
        with locks.writing(folder):
            waited = time.monotonic() - start
        killer.wait()
    assert waited >= 0.9


def test_publishing_waits_for_readers_and_keeps_their_input(tmp_path: Path) -> None:
    final = tmp_path / DATE / "features"
    with publish_atomically(final) as staging:
        (staging / "v").write_text("1")
    with held_elsewhere("reading", final / "split"):
        with (
            pytest.raises(locks.LockTimeoutError, match="read by another stage"),
            publish_atomically(final) as staging,
        ):
            (staging / "v").write_text("2")
        # The reader's input is untouched and no staging folder is left visible.
        assert (final / "v").read_text() == "1"
        assert sorted(p.name for p in final.parent.iterdir()) == ["_locks", "features"]
    with publish_atomically(final) as staging:
        (staging / "v").write_text("2")
    assert (final / "v").read_text() == "2"


def test_a_cache_published_twice_keeps_the_first_copy(tmp_path: Path) -> None:
    final = tmp_path / DATE / "_work" / "cache-abc"
    with publish_atomically(final, replace=False) as staging:
        (staging / "v").write_text("first")
    with publish_atomically(final, replace=False) as staging:
        (staging / "v").write_text("second")
    assert (final / "v").read_text() == "first"
    assert sorted(p.name for p in final.parent.iterdir()) == ["cache-abc"]


def test_readers_share(tmp_path: Path) -> None:
    folder = tmp_path / DATE / "features"
    with held_elsewhere("reading", folder), locks.reading(folder):
        pass


def test_stage_command_refuses_while_another_produces_the_same_output(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    folder = root / DATE / "evaluate" / "mostpop"
    with held_elsewhere("writing", folder) as holder:
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "recsys"),
                "evaluate",
                "model=mostpop",
                f"paths.root={root}",
                f"run.date={DATE}",
                "locks.wait_s=0.5",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "COLUMNS": "200"},
        )
    output = done.stdout + done.stderr
    assert done.returncode == 2, output[-3000:]
    assert f"pid {holder.pid}" in output and "This is a bug" not in output
    assert not (root / DATE / "features").exists()  # refused before doing any work
