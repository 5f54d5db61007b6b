"""The project's wheel, built from the checkout as ``pip wheel .`` would (no network, no build isolation)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BuiltWheel:
    path: Path
    build_log: str


def build_wheel(out: Path) -> BuiltWheel:
    """Build the wheel into ``out``. Build isolation is off: the venv already has setuptools, and an isolated
    build would fetch it from the index."""
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v"]
    result = subprocess.run(
        [*command, "-w", str(out), "."],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    return BuiltWheel(wheel, result.stdout + result.stderr)
