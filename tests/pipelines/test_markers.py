"""Success markers: atomic round trip, digests, output fingerprints, cleanup of a killed run's staging."""

from __future__ import annotations

import os
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from pipelines.markers import (
    Marker,
    fingerprint_output,
    fingerprint_outputs,
    marker_path,
    read_marker,
    started_path,
    write_json_atomically,
    write_marker,
)
from recsys.errors import ManifestError
from recsys.manifest import remove_stale_staging


def _marker(**changes: object) -> Marker:
    base = Marker(
        stage="evaluate_ease",
        kind="evaluate",
        config_hash="c" * 64,
        inputs={"features": "f" * 64},
        outputs={"evaluate/ease": "o" * 64},
        started_at="2026-01-01T00:00:00.000+00:00",
        finished_at="2026-01-01T00:00:05.000+00:00",
        seconds=5.0,
        mlflow_run_id="abc",
        metrics={"test/ndcg_at_10": 0.25},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_marker_round_trip_removes_the_started_file(tmp_path: Path) -> None:
    write_json_atomically(started_path(tmp_path, "evaluate_ease"), {"pid": 1})
    marker = _marker()
    write_marker(tmp_path, marker)
    assert read_marker(tmp_path, "evaluate_ease") == marker
    assert not started_path(tmp_path, "evaluate_ease").exists()
    assert read_marker(tmp_path, "other") is None
    assert [p.name for p in marker_path(tmp_path, "x").parent.iterdir()] == ["evaluate_ease.json"]


def test_unreadable_marker_names_the_file(tmp_path: Path) -> None:
    path = marker_path(tmp_path, "s")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ManifestError, match=r"_markers/s\.json: unreadable success marker"):
        read_marker(tmp_path, "s")


def test_digest_depends_on_config_inputs_and_outputs_not_on_times() -> None:
    marker = _marker()
    assert marker.digest() == _marker(finished_at="2027-01-01", seconds=1.0, metrics={}).digest()
    assert marker.digest() != _marker(config_hash="d" * 64).digest()
    assert marker.digest() != _marker(inputs={"features": "g" * 64}).digest()
    assert marker.digest() != _marker(outputs={"evaluate/ease": "p" * 64}).digest()


def test_output_fingerprint_changes_when_a_file_is_rewritten_or_added(tmp_path: Path) -> None:
    out = tmp_path / "evaluate" / "ease"
    (out / "metrics").mkdir(parents=True)
    data = out / "metrics" / "part-0.parquet"
    data.write_bytes(b"1234")
    first = fingerprint_output(out)
    assert first is not None and fingerprint_output(out) == first
    os.utime(data, ns=(1, 1))
    second = fingerprint_output(out)
    assert second != first
    (out / "extra.txt").write_text("x")
    assert fingerprint_output(out) not in (first, second)
    assert fingerprint_outputs(tmp_path, ["evaluate/ease", "missing"])["missing"] is None


def test_stale_staging_of_a_killed_run_is_removed_and_nothing_else(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    live = subprocess.Popen(["sleep", "30"])
    staging = tmp_path / f".features.tmp-{dead.pid}-0a1b2c3d"
    (staging / "split" / "_temporary").mkdir(parents=True)
    old = tmp_path / "evaluate" / ".ease.old-deadbeef"  # written before staging names carried a pid
    old.mkdir(parents=True)
    keep = [
        tmp_path / "features" / "split",
        tmp_path / ".hidden-but-not-staging",
        tmp_path / ".x.tmp-short",
        tmp_path / "evaluate" / f".mostpop.tmp-{live.pid}-0a1b2c3d",  # another command publishing now
    ]
    for folder in keep:
        folder.mkdir(parents=True)
    try:
        removed = remove_stale_staging(tmp_path)
    finally:
        live.kill()
        live.wait()
    assert sorted(removed) == sorted([staging, old])
    assert not staging.exists() and not old.exists()
    assert all(folder.exists() for folder in keep)
