"""Success markers: the proof that a stage finished, and what it finished with.

A marker is ``<root>/<date>/_markers/<stage>.json``, written atomically (temporary file, fsync, rename)
after the stage's outputs are published, so its presence means every output is complete. A rerun skips a
stage when its marker records the same config hash, the same input fingerprints (the upstream markers'
digests) and outputs that are still there unchanged. A stage that was killed has a ``.started`` file but
no marker, and runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recsys.errors import ManifestError

MARKERS_DIR = "_markers"
MARKER_VERSION = 1


@dataclass(frozen=True)
class Marker:
    """What a finished stage wrote down.

    Attributes:
        stage: stage name.
        kind: stage kind.
        config_hash: sha256 of the stage's composed config (+ kind and declared outputs).
        inputs: upstream stage name -> that stage's marker digest at the time this stage ran.
        outputs: output folder (relative to the run folder) -> fingerprint of its files.
        started_at, finished_at: ISO times (UTC); seconds: wall time of the stage.
        mlflow_run_id: the MLflow run the stage logged to, when it has one.
        metrics: the stage's key numbers (shown in the summary and the report).
        config: the composed config the hash was taken of, so a rerun can say which keys changed.
        resources: what the stage cost (``recsys.resources.ResourceUsage``: CPU seconds of every process,
            peak RSS of the driver and its workers); not part of the digest.
    """

    stage: str
    kind: str
    config_hash: str
    inputs: dict[str, str]
    outputs: dict[str, str]
    started_at: str
    finished_at: str
    seconds: float
    mlflow_run_id: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, float] = field(default_factory=dict)
    version: int = MARKER_VERSION

    def digest(self) -> str:
        """What downstream stages record as their input fingerprint: config and outputs, not times."""
        payload = json.dumps(
            {"config_hash": self.config_hash, "inputs": self.inputs, "outputs": self.outputs}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config mappings."""
    out: list[str] = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(changed_keys(a, b, f"{prefix}{key}."))
        elif a != b:
            out.append(f"{prefix}{key}")
    return out


def markers_dir(run_folder: Path) -> Path:
    return run_folder / MARKERS_DIR


def marker_path(run_folder: Path, stage: str) -> Path:
    return markers_dir(run_folder) / f"{stage}.json"


def started_path(run_folder: Path, stage: str) -> Path:
    return markers_dir(run_folder) / f"{stage}.started.json"


def write_json_atomically(path: Path, payload: Mapping[str, Any]) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as handle:
        handle.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def write_marker(run_folder: Path, marker: Marker) -> None:
    write_json_atomically(marker_path(run_folder, marker.stage), asdict(marker))
    started_path(run_folder, marker.stage).unlink(missing_ok=True)


def read_marker(run_folder: Path, stage: str) -> Marker | None:
    """The stage's marker, or ``None`` when it has none (never finished, or removed)."""
    path = marker_path(run_folder, stage)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("version") != MARKER_VERSION:
            return None
        return Marker(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ManifestError(
            f"{path}: unreadable success marker ({exc}); delete it to rerun the stage."
        ) from exc


def remove_marker(run_folder: Path, stage: str) -> None:
    marker_path(run_folder, stage).unlink(missing_ok=True)


def fingerprint_output(folder: Path) -> str | None:
    """Relative path, size and mtime of every file under ``folder`` (``None`` when it is missing).

    Stat only, no reading: cheap on large Spark outputs, and any rewrite changes an mtime.
    """
    if not folder.exists():
        return None
    digest = hashlib.sha256()
    files = [folder] if folder.is_file() else sorted(p for p in folder.rglob("*") if p.is_file())
    for path in files:
        stat = path.stat()
        rel = path.relative_to(folder) if path != folder else Path(path.name)
        digest.update(f"{rel}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def fingerprint_outputs(run_folder: Path, outputs: Iterable[str]) -> dict[str, str | None]:
    return {out: fingerprint_output(run_folder / out) for out in outputs}
