"""The contract between stages: every output folder holds Parquet plus a `manifest.json`.

Outputs are published a whole stage at a time: jobs write into a hidden temporary folder next to the stage
folder, and only when every output of the stage is complete is the temporary folder renamed into place. A
failed job therefore leaves the previous published stage (or nothing) behind, never a half-written one.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
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
# publish_atomically's staging (".<name>.tmp-<pid>-<hex8>") and replaced (".<name>.old-<pid>-<hex8>")
# folders; the pid tells a live publisher's folder from one a killed process left behind.
_SIDE_FOLDER = re.compile(r"^\..+\.(tmp|old)-(?:(\d+)-)?[0-9a-f]{8}$")


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


def _side_folder(final: Path, kind: str) -> Path:
    return final.parent / f".{final.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_staging(path: Path) -> bool:
    """A staging or replaced folder of :func:`publish_atomically` whose process is gone (killed mid-publish);
    a live process's folder (another command publishing right now) is not stale."""
    match = _SIDE_FOLDER.match(path.name)
    if match is None or not path.is_dir():
        return False
    pid = match.group(2)
    return pid is None or (int(pid) != os.getpid() and not _alive(int(pid)))


def remove_stale_staging(folder: Path, recursive: bool = True) -> list[Path]:
    """Delete staging folders killed processes left in ``folder`` (and below it, with ``recursive``): they
    are hidden, so never visible as outputs; those of live processes (a command publishing in parallel)
    stay."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    candidates = folder.rglob(".*") if recursive else folder.glob(".*")
    for path in sorted(candidates):
        if path.exists() and is_stale_staging(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


@contextmanager
def publish_atomically(final: Path, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it becomes ``final`` in one rename.

    On an exception the temporary folder is deleted and ``final`` keeps its previous content. Replacing a
    published unit of a run folder waits for the stages reading it (:func:`recsys.locks.publishing`), so a
    reader never sees its input swapped. ``replace=False`` is for content-addressed caches: when another
    process published the same ``final`` first, its copy is kept and this one discarded.
    """
    from recsys import faults, locks

    final = final.resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = _side_folder(final, "tmp")
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    faults.kill_before_publish(final)
    if not replace:
        try:
            os.rename(staging, final)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(staging, ignore_errors=True)
        return
    previous: Path | None = None
    try:
        with locks.publishing(final):
            if final.exists():
                previous = _side_folder(final, "old")
                os.replace(final, previous)
            os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
