"""Fault injection for the kill-and-resume tests (``tests/pipelines/test_kill_matrix.py``).

A scheduler kills a task whenever it likes; the worst moment for a stage is when its output is completely
written into the staging folder but not yet renamed into place. ``RECSYS_KILL_BEFORE_PUBLISH=<unit>`` (a
published unit relative to the run folder, e.g. ``evaluate/mostpop``, ``train/sasrec``, ``report``) makes
the process group that is publishing it SIGKILL itself at exactly that moment, the way a scheduler kills
a task's process group: no handler, ``finally`` or ``atexit`` runs. Unset (always, outside tests), this
module does nothing.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

KILL_BEFORE_PUBLISH = "RECSYS_KILL_BEFORE_PUBLISH"


def kill_before_publish(final: Path) -> None:
    """SIGKILL this process group when ``final`` is the unit named by ``RECSYS_KILL_BEFORE_PUBLISH``."""
    unit = os.environ.get(KILL_BEFORE_PUBLISH, "").strip("/")
    if unit and final.as_posix().endswith(f"/{unit}"):
        os.killpg(os.getpgrp(), signal.SIGKILL)
