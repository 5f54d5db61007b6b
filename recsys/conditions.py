"""Failures caused by the machine, not by our code: named with their remedy in one line.

A full disk, a read-only mount, a folder this user cannot write, a SQLite store another process held too
long, or an input file another program replaced while a stage read it: each surfaces deep inside Python,
PyArrow, Spark's JVM or SQLAlchemy with a different exception type. The command line asks
:func:`known_condition` before it calls a failure a bug; the stage has already discarded its staging
folder (:func:`recsys.manifest.publish_atomically`), so nothing half-written was published.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

from recsys.errors import RecsysError

_AFTER = "Nothing half-written was published; a rerun resumes after the last finished stage."


class EnvironmentConditionError(RecsysError):
    """The machine refused the work (disk, permissions, a busy store, a replaced input): not a bug."""


@dataclass(frozen=True)
class Condition:
    name: str
    errnos: tuple[int, ...]
    # Substrings of the message when the error crossed a language boundary (Spark's JVM, SQLite).
    texts: tuple[str, ...]
    remedy: str


DISK_FULL = Condition(
    "disk full",
    (errno.ENOSPC,),
    ("No space left on device", "database or disk is full"),
    "free space on that filesystem, or set paths.root (and spark.local_dir) to one with room",
)

CONDITIONS = (
    DISK_FULL,
    Condition(
        "disk quota exceeded",
        (errno.EDQUOT,),
        ("Disk quota exceeded",),
        "free space within the quota, or set paths.root to a folder with more quota",
    ),
    Condition(
        "read-only folder",
        (errno.EROFS,),
        ("Read-only file system",),
        "remount it read-write, or set paths.root to a writable folder",
    ),
    Condition(
        "permission denied",
        (errno.EACCES, errno.EPERM),
        ("Permission denied",),
        "give this user write access to the folder, or set paths.root to one it owns",
    ),
    Condition(
        "tracking store busy",
        (),
        ("database is locked",),
        "another process held the SQLite store past its busy timeout; rerun, or use tracking=server "
        "(docs/operations.md) for many parallel writers",
    ),
    Condition(
        "input replaced while reading",
        (),
        ("FAILED_READ_FILE.FILE_NOT_EXIST",),
        "a program outside recsys' stage locks replaced an input this stage was reading; rerun the "
        "stage, and let only recsys commands write under paths.root",
    ),
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling (each once)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _where(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.filename:
        return f" at {exc.filename}"
    return ""


def known_condition(exc: BaseException) -> EnvironmentConditionError | None:
    """The one-line error for ``exc`` when the machine caused it, else ``None`` (a real bug)."""
    chain = list(_chain(exc))
    for link in chain:
        if isinstance(link, OSError):
            for condition in CONDITIONS:
                if link.errno in condition.errnos:
                    return _error(condition, f"{_where(link)} ({link.strerror})")
    found = condition_in(" ".join(str(link) for link in chain))
    if found is not None:
        condition, pattern = found
        return _error(condition, f" ({pattern})")
    return None


def condition_in(text: str) -> tuple[Condition, str] | None:
    """The condition whose message text appears in ``text`` (an error message, or a failed command's log
    line), with the text that matched."""
    for condition in CONDITIONS:
        for pattern in condition.texts:
            if pattern in text:
                return condition, pattern
    return None


def _error(condition: Condition, detail: str) -> EnvironmentConditionError:
    return EnvironmentConditionError(f"{condition.name}{detail}: {condition.remedy}. {_AFTER}")
