"""The contract between stages: every output folder holds Parquet plus a `manifest.json`.

Outputs are published a whole stage at a time: jobs write into a hidden temporary folder next to the stage
folder, and only when every output of the stage is complete is the temporary folder renamed into place. A
failed job therefore leaves the previous published stage (or nothing) behind, never a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys import __version__
from recsys.errors import ManifestError

MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """What a consumer needs to know about one output without reading the producer's code.

    Attributes:
        name: output name (e.g. ``interactions``, ``sequences``).
        row_count: rows in the Parquet data.
        schema: ``[{"name": ..., "type": ...}]`` in column order (Spark simple type strings).
        counts: derived sizes: distinct users/items, rows per split, vocabulary sizes, ...
        config_hash: sha256 of the config subtree that produced the output.
        source_fingerprint: sha256 over the inputs (file paths, sizes, mtimes or upstream manifests).
    """

    name: str
    row_count: int
    schema: list[dict[str, str]]
    counts: dict[str, int]
    config_hash: str
    source_fingerprint: str
    format: str = "parquet"
    recsys_version: str = __version__
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    extra: dict[str, Any] = field(default_factory=dict)

    def column_type(self, column: str) -> str:
        for entry in self.schema:
            if entry["name"] == column:
                return entry["type"]
        raise KeyError(column)


def write_manifest(folder: Path, manifest: Manifest) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")


def read_manifest(folder: Path) -> Manifest:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ManifestError(
            f"{path}: manifest missing; the stage that writes {folder.name!r} has not finished."
        )
    try:
        data = json.loads(path.read_text())
        return Manifest(**data)
    except (json.JSONDecodeError, TypeError) as exc:
        raise ManifestError(f"{path}: unreadable manifest ({exc}).") from exc


def require_columns(folder: Path, manifest: Manifest, expected: Mapping[str, str]) -> None:
    """Fail early, naming file and column, when an upstream output lacks a column or has another type."""
    found = {e["name"]: e["type"] for e in manifest.schema}
    for column, dtype in expected.items():
        if column not in found:
            raise ManifestError(
                f"{folder / MANIFEST_FILE}: column {column!r} missing; found columns {sorted(found)}."
            )
        if found[column] != dtype:
            raise ManifestError(
                f"{folder / MANIFEST_FILE}: column {column!r} has type {found[column]!r}, expected {dtype!r}."
            )


def config_hash(config: Mapping[str, Any]) -> str:
    """Stable hash of a (resolved, plain) config mapping; key order does not matter."""
    payload = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def fingerprint_files(paths: Iterable[Path]) -> str:
    """Cheap change detector for raw inputs: path, size and modification time of every file."""
    digest = hashlib.sha256()
    for path in sorted({p.resolve() for p in paths}):
        stat = path.stat()
        digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def fingerprint_manifests(folders: Iterable[Path]) -> str:
    """Fingerprint of upstream outputs: their manifests say everything that matters about them."""
    digest = hashlib.sha256()
    for folder in sorted(folders):
        manifest = read_manifest(folder)
        digest.update(
            f"{manifest.name}\0{manifest.row_count}\0{manifest.config_hash}\0{manifest.source_fingerprint}\n".encode()
        )
    return digest.hexdigest()


@contextmanager
def publish_atomically(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it replaces ``final`` in one rename.

    On an exception the temporary folder is deleted and ``final`` keeps its previous content.
    """
    final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    previous: Path | None = None
    if final.exists():
        previous = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(final, previous)
    os.replace(staging, final)
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
