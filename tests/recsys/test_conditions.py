"""Which failures are the machine's (named, with a remedy) and which are bugs."""

from __future__ import annotations

import errno
import sqlite3

from recsys.conditions import known_condition


def _raised_from(outer: Exception, inner: BaseException) -> Exception:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except Exception as wrapped:
        return wrapped


def test_os_errors_are_named_by_errno_with_the_file_and_remedy() -> None:
    full = known_condition(OSError(errno.ENOSPC, "No space left on device", "/data/runs/x.parquet"))
    assert full is not None
    message = str(full)
    assert message.startswith("disk full at /data/runs/x.parquet (No space left on device): ")
    assert "paths.root" in message and "Nothing half-written was published" in message
    read_only = known_condition(OSError(errno.EROFS, "Read-only file system", "/mnt/ro"))
    assert read_only is not None and str(read_only).startswith("read-only folder at /mnt/ro")
    denied = known_condition(PermissionError(errno.EACCES, "Permission denied", "/srv/runs"))
    assert denied is not None and str(denied).startswith("permission denied at /srv/runs")


def test_the_cause_is_found_through_wrapping_exceptions_and_foreign_messages() -> None:
    wrapped = _raised_from(RuntimeError("stage failed"), OSError(errno.EDQUOT, "Disk quota exceeded"))
    found = known_condition(wrapped)
    assert found is not None and str(found).startswith("disk quota exceeded")
    # Errors that crossed from the JVM or SQLite carry only text.
    spark = RuntimeError("Job aborted: java.io.IOException: No space left on device")
    assert str(known_condition(spark)).startswith("disk full (No space left on device)")
    busy = _raised_from(
        RuntimeError("(sqlite3.OperationalError)"), sqlite3.OperationalError("database is locked")
    )
    assert str(known_condition(busy)).startswith("tracking store busy")
    replaced = RuntimeError(
        "[FAILED_READ_FILE.FILE_NOT_EXIST] File file:/r/ingest/items/part-0 does not exist"
    )
    assert str(known_condition(replaced)).startswith("input replaced while reading")


def test_anything_else_stays_a_bug() -> None:
    assert known_condition(ValueError("shapes (3,) and (4,) not aligned")) is None
    assert known_condition(OSError(errno.EBADF, "Bad file descriptor")) is None
    assert known_condition(KeyError("user_idx")) is None
