"""Stage locks: parallel commands on one run folder neither collide nor read an output while it is replaced.

Every published unit of a run folder (``ingest``, ``features``, ``evaluate/<model>``, ``train/<model>``,
``index/<name>``, ``candidates/<model>``, ``rerank/<name>``, ``report``) has two ``flock`` files under
``<run>/_locks/`` (the kernel releases them when a holder dies, even on ``kill -9``):

- the *writer* lock, held exclusively by the one command that produces the unit for the whole time it
  works: the same stage started twice waits for it (``locks.wait_s``), then refuses naming the holder;
- the *publish* lock, held shared by every command that reads the unit for the whole time it reads, and
  exclusively by :func:`recsys.manifest.publish_atomically` only for the rename that replaces the unit, so
  a reader never sees its input swapped under it (the publisher waits up to ``locks.publish_wait_s``).

Independent stages (three baselines, two trainings) lock different units and run in parallel.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from recsys.errors import RecsysError
from recsys.paths import LOCKS, unit_of
from recsys.settings import LocksConfig

WRITER_SUFFIX = ".writer.lock"
PUBLISH_SUFFIX = ".publish.lock"


class LockTimeoutError(RecsysError):
    """Another command holds a lock this one needs, for longer than the configured wait."""


# The publish wait of publish_atomically, which gets no config: set by the stage runner from ``locks``.
_settings = LocksConfig()
# Locks this process holds (path -> mode): flock locks of two descriptors of one process conflict, so a
# process that already holds a lock must not take it again.
_held: dict[Path, int] = {}
_held_guard = threading.Lock()


def configure(locks: Mapping[str, Any] | None) -> LocksConfig:
    """Take ``locks.*`` from the composed config (defaults where it has none)."""
    global _settings
    _settings = LocksConfig(**dict(locks or {}))
    return _settings


def settings() -> LocksConfig:
    return _settings


def lock_file(run_folder: Path, unit: str, suffix: str) -> Path:
    return run_folder / LOCKS / f"{unit.replace('/', '__')}{suffix}"


def _holder(handle: TextIO) -> str:
    handle.seek(0)
    try:
        info = json.loads(handle.read() or "{}")
    except json.JSONDecodeError:
        info = {}
    if not info:
        return "another process"
    return f"pid {info.get('pid')} on {info.get('host')} (`{info.get('command')}`, since {info.get('since')})"


def _sign(handle: TextIO) -> None:
    """Write who holds the lock into the lock file, for the message of a command that waits for it."""
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join(Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(info))
    handle.flush()


@contextmanager
def _flock(path: Path, mode: int, wait_s: float, what: str, remedy: str) -> Iterator[None]:
    """Hold ``flock(mode)`` on ``path``; retry until ``wait_s`` has passed, then raise naming the holder."""
    path = path.resolve()
    with _held_guard:
        mine = _held.get(path)
    if mine is not None and (mine == fcntl.LOCK_EX or mode == fcntl.LOCK_SH):
        yield
        return
    if mine is not None:
        raise RecsysError(f"{path}: this process reads {what} and also replaces it; a stage must not do both")
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"{path}: {what} is locked by {_holder(handle)}; waited {wait_s:g} s. {remedy}"
                    ) from None
                time.sleep(_settings.poll_s)
        with _held_guard:
            _held[path] = mode
        try:
            if mode == fcntl.LOCK_EX:
                _sign(handle)
            yield
        finally:
            with _held_guard:
                _held.pop(path, None)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def writing(folder: Path) -> Any:
    """Exclusive right to produce ``folder`` (a published unit) for as long as the block runs."""
    run_folder, unit = _unit(folder)
    return _flock(
        lock_file(run_folder, unit, WRITER_SUFFIX),
        fcntl.LOCK_EX,
        _settings.wait_s,
        f"{run_folder / unit} (being produced)",
        "Wait for that command to finish, or raise locks.wait_s to queue behind it; a killed holder "
        "releases the lock.",
    )


def reading(folder: Path) -> Any:
    """Shared right to read ``folder``: its publisher cannot replace it until the block ends."""
    run_folder, unit = _unit(folder)
    return _flock(
        lock_file(run_folder, unit, PUBLISH_SUFFIX),
        fcntl.LOCK_SH,
        _settings.publish_wait_s,
        f"{run_folder / unit} (being replaced)",
        "Its publisher is renaming a finished output into place; retry.",
    )


def publishing(folder: Path) -> Any:
    """Exclusive right to replace ``folder``: waits for its readers (no-op outside a run folder)."""
    found = unit_of(folder)
    if found is None:
        return nullcontext()
    run_folder, unit = found
    return _flock(
        lock_file(run_folder, unit, PUBLISH_SUFFIX),
        fcntl.LOCK_EX,
        _settings.publish_wait_s,
        f"{run_folder / unit} (read by another stage)",
        "A stage that reads it is still running; raise locks.publish_wait_s or rerun this stage after it.",
    )


def exclusive(path: Path, what: str, remedy: str, wait_s: float | None = None) -> Any:
    """Exclusive ``flock`` on any file (e.g. beside a SQLite store while it is created)."""
    return _flock(path, fcntl.LOCK_EX, _settings.wait_s if wait_s is None else wait_s, what, remedy)


def _unit(folder: Path) -> tuple[Path, str]:
    found = unit_of(folder)
    if found is None:
        raise RecsysError(f"{folder}: not under a run folder <root>/<YYYY-MM-DD>/; nothing to lock.")
    return found


@contextmanager
def stage_locks(writes: Iterable[Path], reads: Iterable[Path]) -> Iterator[None]:
    """Hold the writer lock of every unit ``writes`` touches and the shared publish lock of every unit
    ``reads`` touches (units it also writes are not read-locked); always in sorted order, so two commands
    never wait for each other in a cycle."""
    written = {unit_of(w) for w in writes}
    write_units = sorted(u for u in written if u is not None)
    read_units = sorted(u for u in {unit_of(r) for r in reads} if u is not None and u not in written)
    with ExitStack() as stack:
        for run_folder, unit in write_units:
            stack.enter_context(writing(run_folder / unit))
        for run_folder, unit in read_units:
            stack.enter_context(reading(run_folder / unit))
        yield


__all__ = [
    "LockTimeoutError",
    "configure",
    "exclusive",
    "lock_file",
    "publishing",
    "reading",
    "settings",
    "stage_locks",
    "writing",
]
