"""The distribution a user installs: its name, license, declared dependencies and contents.

The wheel is built from the checkout; every module of the four packages and every bundled config must be
inside it, and the build must not warn about folders it left out.
"""

from __future__ import annotations

import email
import re
import tomllib
import zipfile
from email.message import Message

import pytest

from tests.helpers.wheel import REPO, BuiltWheel, build_wheel

PACKAGES = ("recsys", "features", "models", "pipelines")
# Distributions whose exact versions belong in the constraints file only.
EXACT_PIN = re.compile(r"===?\s*[\w.*+]+\s*$")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> BuiltWheel:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def _metadata(wheel: BuiltWheel) -> Message:
    with zipfile.ZipFile(wheel.path) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return project


def test_wheel_holds_every_module_and_config(wheel: BuiltWheel) -> None:
    with zipfile.ZipFile(wheel.path) as archive:
        names = set(archive.namelist())
    expected = {
        str(path.relative_to(REPO))
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    expected |= {f"recsys/conf/{path.relative_to(REPO / 'conf')}" for path in (REPO / "conf").rglob("*.yaml")}
    assert sorted(expected - names) == []
    assert not [name for name in names if name.startswith(("tests/", "conf/", "runs/"))]


def test_wheel_builds_without_warnings_about_left_out_folders(wheel: BuiltWheel) -> None:
    assert "absent from the `packages` configuration" not in wheel.build_log
    assert "SetuptoolsDeprecationWarning" not in wheel.build_log


def test_distribution_name_license_and_ranges(wheel: BuiltWheel) -> None:
    metadata = _metadata(wheel)
    # "recsys" on the public index is an unrelated project.
    assert metadata["Name"] == "recsys-pipelines"
    assert metadata["License-Expression"] == "Apache-2.0"
    with zipfile.ZipFile(wheel.path) as archive:
        license_text = archive.read(f"recsys_pipelines-{metadata['Version']}.dist-info/licenses/LICENSE")
    assert b"Apache License" in license_text and b"Version 2.0" in license_text
    requirements = metadata.get_all("Requires-Dist") or []
    pinned = [req for req in requirements if EXACT_PIN.search(req.split(";")[0])]
    assert pinned == [], "exact pins belong in constraints-cpu.txt"
    assert metadata["Requires-Python"] == ">=3.11"


def test_optional_stacks_are_extras_not_requirements() -> None:
    project = _project()
    dependencies = " ".join(str(d) for d in project["dependencies"])  # type: ignore[attr-defined]
    extras: dict[str, list[str]] = project["optional-dependencies"]  # type: ignore[assignment]
    optional_stacks = ("transformers", "peft", "sentence-transformers", "duckdb", "faiss", "fbgemm-gpu-cpu")
    for optional in optional_stacks:
        assert optional not in dependencies
    assert {"cpu", "gpu", "llm", "bench", "server", "dev"} <= set(extras)
    assert any(req.startswith("torchrec") for req in extras["gpu"])


def test_constraints_pin_every_range_the_makefile_installs() -> None:
    """The Makefile installs with the constraints file; each pin there must satisfy the declared range."""
    from packaging.requirements import Requirement

    pins = {}
    for line in (REPO / "constraints-cpu.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            pins[requirement.name] = next(iter(requirement.specifier)).version
    project = _project()
    extras: dict[str, list[str]] = project["optional-dependencies"]  # type: ignore[assignment]
    declared = [*project["dependencies"], *extras["cpu"], *extras["llm"], *extras["bench"], *extras["server"]]  # type: ignore[misc]
    for text in declared:
        requirement = Requirement(text)
        if requirement.name in pins:
            assert requirement.specifier.contains(pins[requirement.name]), (text, pins[requirement.name])
    assert "constraints-cpu.txt" in (REPO / "Makefile").read_text()
