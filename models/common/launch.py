"""Start ``world_size`` local processes for one function: the launcher behind the 2-process bench and tests.

``elastic_launch`` with a file rendezvous (no TCP port to pick, nothing left listening) gives every process
the torchelastic environment (RANK, WORLD_SIZE, MASTER_ADDR...), so Lightning joins it instead of spawning
its own processes, and a plain loop can call ``dist.init_process_group`` directly.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.distributed.launcher.api import LaunchConfig, elastic_launch

MONITOR_INTERVAL_S = 1
"""How often the agent polls its workers; the default (5 s) adds seconds to every short launch."""


def launch_local(fn: Callable[..., Any], world_size: int, *args: Any) -> dict[int, Any]:
    """Run ``fn(*args)`` in ``world_size`` fresh spawned processes on this machine.

    Returns:
        ``{rank: fn's return value on that rank}`` (values must be picklable).

    Raises:
        torch.distributed.elastic.multiprocessing.errors.ChildFailedError: when any rank fails; no restarts.
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
        results: dict[int, Any] = elastic_launch(config, entrypoint=fn)(*args)
    return results
