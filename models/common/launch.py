"""Start ``world_size`` local processes for one function: the launcher behind the 2-process bench and tests.

``elastic_launch`` with a file rendezvous (no TCP port to pick, nothing left listening) gives every process
the torchelastic environment (RANK, WORLD_SIZE, MASTER_ADDR...), so Lightning joins it instead of spawning
its own processes, and a plain loop can call ``dist.init_process_group`` directly.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from recsys.errors import RecsysError

MONITOR_INTERVAL_S = 1
"""How often the agent polls its workers; the default (5 s) adds seconds to every short launch."""


def launch_local(fn: Callable[..., Any], world_size: int, *args: Any) -> dict[int, Any]:
    """Run ``fn(*args)`` in ``world_size`` fresh spawned processes on this machine.

    Returns:
        ``{rank: fn's return value on that rank}`` (values must be picklable).

    Raises:
        RecsysError: the first (lowest-rank) user-facing error a rank raised (bad input, bad config), as is,
            so the command prints its one line instead of a wall of per-rank tracebacks.
        torch.distributed.elastic.multiprocessing.errors.ChildFailedError: when any rank fails otherwise; no
            restarts.
    """
    with tempfile.TemporaryDirectory(prefix="recsys-launch-") as folder:
        config = LaunchConfig(
            min_nodes=1,
            max_nodes=1,
            nproc_per_node=world_size,
            run_id=str(uuid.uuid4()),
            rdzv_backend="c10d",
            rdzv_endpoint=str(Path(folder) / "rdzv"),
            rdzv_configs={"store_type": "file"},
            start_method="spawn",
            monitor_interval=MONITOR_INTERVAL_S,
            max_restarts=0,
        )
        errors = Path(folder) / "errors"
        errors.mkdir()
        try:
            results: dict[int, Any] = elastic_launch(config, entrypoint=_keep_user_errors)(errors, fn, *args)
        except ChildFailedError:
            raised = sorted(errors.glob("*.pickle"), key=lambda p: int(p.stem))
            if raised:
                raise pickle.loads(raised[0].read_bytes()) from None
            raise
    return results


def _keep_user_errors(errors: Path, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one rank's ``fn``; a :class:`RecsysError` is also written down for the launcher to re-raise."""
    try:
        return fn(*args)
    except RecsysError as exc:
        # The launcher sets RANK in every process it starts.
        (errors / f"{os.environ['RANK']}.pickle").write_bytes(pickle.dumps(exc))
        raise
