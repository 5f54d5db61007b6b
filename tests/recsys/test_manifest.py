"""Atomic publishing and manifest checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.errors import ManifestError
from recsys.manifest import (
    Manifest,
    config_hash,
    fingerprint_files,
    publish_atomically,
    read_manifest,
    require_columns,
    write_manifest,
)


def _manifest(rows: int = 3) -> Manifest:
    return Manifest(
        name="x",
        row_count=rows,
        schema=[{"name": "user_idx", "type": "bigint"}],
        counts={"a": 1},
        config_hash="h",
        source_fingerprint="f",
    )


def test_publish_replaces_on_success_and_keeps_old_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "stage"
    with publish_atomically(final) as staging:
        (staging / "out.txt").write_text("v1")
    assert (final / "out.txt").read_text() == "v1"
    with pytest.raises(RuntimeError), publish_atomically(final) as staging:
        (staging / "out.txt").write_text("v2-half")
        raise RuntimeError("job crashed")
    assert (final / "out.txt").read_text() == "v1"
    with publish_atomically(final) as staging:
        (staging / "out.txt").write_text("v2")
    assert (final / "out.txt").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]  # no staging or old folders left


def test_manifest_round_trip_and_column_checks(tmp_path: Path) -> None:
    write_manifest(tmp_path, _manifest())
    loaded = read_manifest(tmp_path)
    assert loaded == _manifest().__class__(**{**loaded.__dict__})
    assert loaded.row_count == 3 and loaded.column_type("user_idx") == "bigint"
    require_columns(tmp_path, loaded, {"user_idx": "bigint"})
    with pytest.raises(ManifestError, match="column 'item_idx' missing"):
        require_columns(tmp_path, loaded, {"item_idx": "bigint"})
    with pytest.raises(ManifestError, match="has type 'bigint', expected 'string'"):
        require_columns(tmp_path, loaded, {"user_idx": "string"})


def test_missing_manifest_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="manifest missing"):
        read_manifest(tmp_path)


def test_config_hash_ignores_key_order_and_sees_values() -> None:
    assert config_hash({"a": 1, "b": {"c": 2}}) == config_hash({"b": {"c": 2}, "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_fingerprint_changes_with_content(tmp_path: Path) -> None:
    path = tmp_path / "f.txt"
    path.write_text("a")
    before = fingerprint_files([path])
    path.write_text("ab")
    assert fingerprint_files([path]) != before
