"""Fixed glibc ``malloc`` thresholds for training processes, so freed step buffers stay in the process.

Why: a training step frees and reallocates the same multi-megabyte tensors every step (activations, their
gradients, the all-to-all buffers of sharded tables). By default glibc serves large requests with fresh
``mmap`` calls and gives freed memory at the top of the heap back to the kernel (``M_TRIM_THRESHOLD``), so
every step page-faults those megabytes in again, zero-filled by the kernel. On ``recsys bench dlrm``
(2 gloo processes, 2048 rows each) that was 1,400-4,700 minor page faults per step, more in the Lightning
loop than in the plain loop because Python objects live a little longer there, and it made most of the gap
between the two. Fixed thresholds (``mallopt``) also switch off glibc's dynamic threshold, and brought it to
12-19 faults per timed step in both loops.

The cost: a process keeps its peak heap instead of shrinking between steps. Only glibc has ``mallopt``;
elsewhere (macOS, musl) :func:`apply_malloc_settings` changes nothing and returns ``False``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
from dataclasses import dataclass

from recsys.errors import ConfigError

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
"""``mallopt`` parameter numbers from glibc's ``malloc.h``."""
MIB = 1 << 20


@dataclass(frozen=True)
class MallocSettings:
    """``model.malloc`` (DLRM): requests of at least ``mmap_threshold_mib`` get their own ``mmap``; free
    memory at the top of the heap is returned to the kernel only above ``trim_threshold_mib``. The config
    value null (``None``) keeps glibc's own dynamic thresholds."""

    mmap_threshold_mib: int
    trim_threshold_mib: int

    def __post_init__(self) -> None:
        for name in ("mmap_threshold_mib", "trim_threshold_mib"):
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"model.malloc.{name}={value}: must be at least 1 (MiB), or malloc=null.")


def apply_malloc_settings(settings: MallocSettings | None) -> bool:
    """Set this process's glibc thresholds; ``True`` when glibc took both, ``False`` when nothing was set.

    Call it once, early in each training process (every rank): it affects allocations made afterwards.
    """
    if settings is None:
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    trim_ok = mallopt(M_TRIM_THRESHOLD, settings.trim_threshold_mib * MIB) == 1
    mmap_ok = mallopt(M_MMAP_THRESHOLD, settings.mmap_threshold_mib * MIB) == 1
    return bool(trim_ok and mmap_ok)


def minor_page_faults() -> int:
    """Minor page faults of this process so far (``getrusage``); their growth per step is what
    :func:`apply_malloc_settings` removes."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
