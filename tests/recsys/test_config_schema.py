"""Typed config (issue 18): every option of every config group composes and is checked against its registered
schema, and a misspelled or ill-typed key fails at compose time with the dotted key named.

Compose only: no Spark session, no torch.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import fields, is_dataclass
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

import pytest
from omegaconf import DictConfig

from pipelines.stages import register_schemas
from recsys.config import compose, conf_dir, to_plain
from recsys.errors import ConfigError
from recsys.structured import registered_groups, schema_for

# Values of the keys some options leave mandatory (`???`): a folder, a file stem, a category, a date.
MANDATORY = {"data.path": "{tmp}", "data.stem": "x", "data.category": "All_Beauty", "run.date": "2026-01-01"}
_MISSING = re.compile(r"config value\(s\) (.+) must be set")


# Core groups register themselves when compose runs; the model families' `model` / `bench` schemas and the
# pipeline's are registered by the layer above (as the command line and the pipeline runner do).
register_schemas()


def _groups() -> list[str]:
    """Every config group: each folder of conf/ with yaml options (whatever exists, nothing assumed)."""
    return sorted(p.name for p in conf_dir().iterdir() if p.is_dir() and any(p.glob("*.yaml")))


def _options() -> list[tuple[str, str]]:
    return [(g, p.stem) for g in _groups() for p in sorted((conf_dir() / g).glob("*.yaml"))]


def _compose(overrides: list[str], tmp_path: Path) -> tuple[DictConfig, list[str]]:
    """``compose(overrides)`` plus the mandatory values the chosen options leave unset (from MANDATORY; a
    key that is not there fails the test with its name); returns the config and the overrides used."""
    try:
        return compose(overrides), overrides
    except ConfigError as exc:
        found = _MISSING.search(str(exc))
        if found is None:
            raise
        missing = [k.strip() for k in found.group(1).split(",")]
        unknown = [k for k in missing if k not in MANDATORY]
        assert not unknown, f"{overrides}: give the test a value for mandatory key(s) {unknown}"
        given = [*overrides, *(f"{k}={MANDATORY[k].format(tmp=tmp_path)}" for k in missing)]
        return compose(given), given


def _leaves(schema: type[Any], prefix: str = "") -> Iterator[tuple[str, tuple[Any, ...]]]:
    """``(dotted key, allowed types)`` of every non-dataclass field, nested dataclasses walked into."""
    hints = get_type_hints(schema)
    for f in fields(schema):
        hint = hints[f.name]
        union = isinstance(hint, UnionType) or get_origin(hint) is Union
        types = tuple(a for a in get_args(hint) if a is not type(None)) if union else (hint,)
        if len(types) == 1 and isinstance(types[0], type) and is_dataclass(types[0]):
            yield from _leaves(types[0], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", types


def _set(plain: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = dict(plain)
    head, _, rest = dotted.partition(".")
    out[head] = _set(dict(out.get(head) or {}), rest, value) if rest else value
    return out


def _ill_typed(group: str, schema: type[Any], node: dict[str, Any]) -> tuple[str, str]:
    """A key of ``schema`` and a value of the wrong type for it: a number field gets a word; a schema without
    one has a string field get a mapping. Never the key that picks the schema (e.g. ``model.name``)."""
    leaves = list(_leaves(schema))
    numbers = [key for key, types in leaves if types in ((int,), (float,))]
    strings = [key for key, types in leaves if types == (str,)]
    for key, value in [*((k, "abc") for k in numbers), *((k, "{oops: 1}") for k in strings)]:
        if schema_for(group, _set(node, key, "x")) is schema:
            return key, value
    raise AssertionError(f"{schema.__name__} has no int, float or str key to give an ill-typed value")


def test_every_group_has_a_schema() -> None:
    compose([])  # the core groups register on the first compose (alone, this test runs before any)
    groups = _groups()
    assert {"data", "features", "model", "trainer", "index", "evaluation", "tracking", "spark"} <= set(groups)
    unregistered = sorted(set(groups) - set(registered_groups()))
    assert not unregistered, f"conf/ group(s) without a registered schema: {unregistered}"
    # The root config's own sections are groups too (not folders): their schemas are registered.
    assert {"paths", "run"} <= set(registered_groups())


@pytest.mark.parametrize(("group", "option"), _options())
def test_option_composes_and_rejects_misspelled_and_ill_typed_keys(
    group: str, option: str, tmp_path: Path
) -> None:
    cfg, chosen = _compose([f"{group}={option}"], tmp_path)
    node = cfg[group]
    assert isinstance(node, DictConfig), f"{group}={option} composed to {node!r}"
    if group == "data":
        assert cfg.data.name == option and cfg.data.format
    schema = schema_for(group, node)
    assert schema is not None, f"{group}={option}: no registered schema applies to this option"
    plain = to_plain(cfg)[group]

    key, value = _ill_typed(group, schema, plain)
    typo = f"{key}{key[-1]}"  # e.g. index.nprobe -> index.nprobee
    with pytest.raises(ConfigError, match=re.escape(f"{group}.{typo}")):
        compose([*chosen, f"+{group}.{typo}=1"])
    with pytest.raises(ConfigError, match=re.escape(f"{group}.{key}")):
        compose([*chosen, f"++{group}.{key}={value}"])


@pytest.mark.parametrize(("key", "value"), [("paths.root", "{oops: 1}"), ("run.date", "[1, 2]")])
def test_root_sections_are_typed(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        compose([f"{key}={value}"])
    group = key.split(".")[0]
    with pytest.raises(ConfigError, match=re.escape(f"{group}.misspelled")):
        compose([f"+{group}.misspelled=1"])


@pytest.mark.parametrize("root", ["s3a://bucket/runs", "hdfs://namenode:8020/recsys", "gs://b/r"])
def test_object_store_roots_are_refused_rather_than_written_to_a_local_folder(root: str) -> None:
    # Path("s3a://bucket/runs") would be a local folder "s3a:/bucket/runs": the error names the way out.
    with pytest.raises(ConfigError, match=r"paths\.root=.*not supported yet.*shared mount"):
        compose([f"paths.root={root}"])
    local = "/mnt/shared/recsys:runs"
    assert to_plain(compose([f"paths.root={local}"]))["paths"]["root"] == local
