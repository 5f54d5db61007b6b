"""A missing optional dependency is a missing install, named with the command that installs it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from recsys.cli import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, main
from recsys.extras import INSTALL_HINTS, missing_dependency


def test_every_optional_module_names_its_install() -> None:
    error = missing_dependency(ModuleNotFoundError("No module named 'peft.tuners'", name="peft.tuners"))
    assert error is not None
    assert "'peft'" in str(error) and "recsys-pipelines[llm]" in str(error)
    assert "--no-deps torchrec==" in INSTALL_HINTS["torchrec"]
    # A module of our own (or any unknown one) missing is a bug, not an install step.
    assert missing_dependency(ModuleNotFoundError("x", name="models.nothing")) is None


def test_cli_names_the_extra_when_duckdb_is_missing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `recsys bench features` imports its reference engine lazily: make that import fail as on a machine
    # without the [bench] extra.
    monkeypatch.setitem(sys.modules, "duckdb", None)
    monkeypatch.delitem(sys.modules, "features.bench", raising=False)
    code = main(["bench", "features", f"paths.root={tmp_path}"])
    out = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, out
    assert "recsys-pipelines[bench]" in out
    assert "This is a bug" not in out


def test_cli_still_reports_other_missing_modules_as_bugs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "features.bench", None)
    code = main(["bench", "features", f"paths.root={tmp_path}"])
    assert code == EXIT_INTERNAL_ERROR
    assert "This is a bug" in capsys.readouterr().err
