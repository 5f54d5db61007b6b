"""glibc malloc thresholds (``model.malloc`` of DLRM models): the settings parse, and in a fresh process they
stop most of a freed large buffer from being page-faulted in again on every reuse."""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

from models.dlrm.config import DLRMConfig
from recsys.allocator import MallocSettings, apply_malloc_settings
from recsys.config import compose, typed
from recsys.errors import ConfigError

GLIBC = platform.libc_ver()[0] == "glibc"
BUFFER_MIB = 48  # above glibc's largest dynamic mmap threshold (32 MiB): by default every one is a fresh mmap
REUSES = 20
PAGE_KIB = 4

# Allocates, touches and frees the same-sized buffer REUSES times; prints the minor faults of those loops.
CHILD = f"""
import json, sys, torch
from recsys.allocator import MallocSettings, apply_malloc_settings, minor_page_faults
settings = None if sys.argv[1] == "default" else MallocSettings(256, 1024)
applied = apply_malloc_settings(settings)
torch.empty({BUFFER_MIB} << 18).fill_(1.0)  # the first one always faults in
before = minor_page_faults()
for _ in range({REUSES}):
    torch.empty({BUFFER_MIB} << 18).fill_(1.0)
print(json.dumps({{"applied": applied, "faults": minor_page_faults() - before}}))
"""


def _child(mode: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True, timeout=120
    )
    result: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_settings_come_from_the_dlrm_model_config() -> None:
    section = {"mmap_threshold_mib": 256, "trim_threshold_mib": 1024}
    assert typed(MallocSettings, section, "model.malloc") == MallocSettings(256, 1024)
    cfg = compose(["model=dlrm"])
    assert typed(DLRMConfig, cfg["model"], "model").malloc == MallocSettings(256, 1024)
    null = compose(["model=dlrm", "model.malloc=null"])
    assert typed(DLRMConfig, null["model"], "model").malloc is None
    with pytest.raises(ConfigError, match=r"model\.malloc\.trim_threshold_mib=0"):
        typed(MallocSettings, {"mmap_threshold_mib": 256, "trim_threshold_mib": 0}, "model.malloc")
    with pytest.raises(ConfigError, match=r"model\.malloc\.trim_threshold_mib"):
        typed(DLRMConfig, compose(["model=dlrm", "model.malloc.trim_threshold_mib=big"])["model"], "model")


def test_no_settings_change_nothing() -> None:
    assert apply_malloc_settings(None) is False


@pytest.mark.skipif(not GLIBC, reason="mallopt thresholds exist only in glibc")
def test_fixed_thresholds_stop_refaulting_a_reused_large_buffer() -> None:
    default, tuned = _child("default"), _child("tuned")
    assert default["applied"] is False and tuned["applied"] is True
    pages_per_buffer = BUFFER_MIB * 1024 // PAGE_KIB
    # glibc's default: each buffer is a fresh mmap, zero-filled page by page (measured: 1.00 faults per page)
    assert default["faults"] > 0.9 * REUSES * pages_per_buffer
    # fixed thresholds: the freed buffer stays in the heap and is mostly reused (measured: 0.10-0.35)
    assert tuned["faults"] < 0.5 * REUSES * pages_per_buffer
