"""The resource monitor counts a stage's worker processes, not only the driver: CPU burnt and memory held
by a child that exits inside the block show up in the usage, and a tree over its memory budget is reported
once, while it still runs."""

from __future__ import annotations

import subprocess
import sys
import threading

from recsys.resources import ResourceMonitor

# A child that holds ~300 MiB for a while and burns one second of CPU.
_WORKER = """
import time
block = bytearray(300 * 2**20)
for i in range(0, len(block), 4096):
    block[i] = 1
start = time.process_time()
while time.process_time() - start < 1.0:
    pass
time.sleep(0.6)
"""


def test_counts_the_cpu_and_memory_of_a_worker_that_exits_inside_the_block() -> None:
    with ResourceMonitor(interval_s=0.05) as monitor:
        subprocess.run([sys.executable, "-c", _WORKER], check=True)
    usage = monitor.usage
    assert usage is not None
    assert usage.cpu_s >= 0.9
    assert usage.peak_workers_rss_mb >= 280
    assert usage.peak_workers >= 1
    assert usage.peak_rss_mb >= usage.peak_workers_rss_mb
    assert usage.wall_s >= 1.0


def test_cpu_before_the_block_is_not_counted() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass\n"
    child = subprocess.Popen(
        [sys.executable, "-c", burn + "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        # Let the child burn its second before the block starts.
        threading.Event().wait(2.0)
        with ResourceMonitor(interval_s=0.05) as monitor:
            threading.Event().wait(0.3)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait()
    assert monitor.usage is not None
    assert monitor.usage.cpu_s < 0.5


def test_a_tree_over_its_memory_budget_is_reported_once_while_it_runs() -> None:
    seen: list[float] = []
    with ResourceMonitor(interval_s=0.05, limit_rss_mb=200, on_limit=seen.append) as monitor:
        subprocess.run([sys.executable, "-c", _WORKER], check=True)
    assert monitor.limit_hit
    assert len(seen) == 1 and seen[0] > 200
