"""CPU time and peak resident memory of a process tree while a block of work runs.

A stage's cost is not only the Python driver's: Spark runs in a JVM child, DDP training in spawned worker
processes. :class:`ResourceMonitor` samples the whole tree (the root and every descendant) on a background
thread, so the pipeline's summary and ``recsys bench scaling`` can say what a stage cost in wall time, CPU
time and memory, and a benchmark can stop a tree that outgrows its memory budget before the kernel's OOM
killer picks a victim at random.

Accounting, and its limits:
* CPU time = the growth, over the block, of the user + system time of every process seen in the tree, a
  process that exits keeping its last reading (so workers that end inside the block count, and nothing is
  counted twice through a parent's reaped-children times). A process born and gone between two samples
  is missed, and an exiting one loses at most its last ``interval_s``.
* Peak memory is sampled (every ``interval_s``): a spike shorter than that can be missed, except the root's,
  whose kernel high-water mark (``ru_maxrss``) is read at the end. Worker memory is the sum of their RSS,
  which counts pages shared between forked workers more than once: an upper bound.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import TracebackType

import psutil

MIB = 1024 * 1024
DEFAULT_INTERVAL_S = 0.2


@dataclass(frozen=True)
class ResourceUsage:
    """What a block of work cost: seconds, CPU seconds (all processes), peak RSS in MiB."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    peak_driver_rss_mb: float
    peak_workers_rss_mb: float
    peak_workers: int

    def as_dict(self) -> dict[str, float]:
        return {k: round(float(v), 3) for k, v in asdict(self).items()}


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


class ResourceMonitor:
    """Context manager sampling the process tree rooted at ``pid`` (default: this process).

    Args:
        pid: root of the tree.
        interval_s: sampling period.
        limit_rss_mb: when the tree's total RSS exceeds it, ``on_limit(total_mb)`` is called once (from the
            sampling thread); the caller decides what to stop.
        on_limit: see ``limit_rss_mb``.
    """

    def __init__(
        self,
        pid: int | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        limit_rss_mb: float | None = None,
        on_limit: Callable[[float], None] | None = None,
    ) -> None:
        self._root = psutil.Process(pid if pid is not None else os.getpid())
        self._self = self._root.pid == os.getpid()
        self._interval_s = interval_s
        self._limit_rss_mb = limit_rss_mb
        self._on_limit = on_limit
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._sample_until_stopped, name="resource-monitor", daemon=True
        )
        self._lock = threading.Lock()
        self._start_cpu: dict[int, float] = {}
        self._last_cpu: dict[int, float] = {}
        self._peak_total = self._peak_driver = self._peak_workers = 0.0
        self._peak_worker_count = 0
        self._limit_hit = False
        self._start_wall = 0.0
        self._start_maxrss_mb = 0.0
        self.usage: ResourceUsage | None = None

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self._root, *self._root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def _sample(self) -> None:
        total = driver = workers = 0.0
        count = 0
        cpu: dict[int, float] = {}
        for process in self._tree():
            try:
                with process.oneshot():
                    rss = process.memory_info().rss / MIB
                    cpu[process.pid] = _cpu_seconds(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            total += rss
            if process.pid == self._root.pid:
                driver = rss
            else:
                workers += rss
                count += 1
        with self._lock:
            self._last_cpu.update(cpu)
            self._peak_total = max(self._peak_total, total)
            self._peak_driver = max(self._peak_driver, driver)
            self._peak_workers = max(self._peak_workers, workers)
            self._peak_worker_count = max(self._peak_worker_count, count)
        if self._limit_rss_mb is not None and total > self._limit_rss_mb and not self._limit_hit:
            self._limit_hit = True
            if self._on_limit is not None:
                self._on_limit(total)

    def _sample_until_stopped(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def __enter__(self) -> ResourceMonitor:
        self._start_wall = time.perf_counter()
        if self._self:
            self._start_maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        self._sample()
        with self._lock:
            self._start_cpu = dict(self._last_cpu)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = time.perf_counter() - self._start_wall
        with self._lock:
            cpu = sum(now - self._start_cpu.get(pid, 0.0) for pid, now in self._last_cpu.items())
            driver = self._peak_driver
            if self._self:
                # The kernel's high-water mark catches a driver spike between two samples, when it is this
                # block's (it only grows, so a peak from before the block leaves it unchanged).
                maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
                if maxrss > self._start_maxrss_mb:
                    driver = max(driver, maxrss)
            self.usage = ResourceUsage(
                wall_s=wall,
                cpu_s=max(cpu, 0.0),
                peak_rss_mb=max(self._peak_total, driver),
                peak_driver_rss_mb=driver,
                peak_workers_rss_mb=self._peak_workers,
                peak_workers=self._peak_worker_count,
            )

    @property
    def limit_hit(self) -> bool:
        return self._limit_hit
