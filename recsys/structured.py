"""Typed config: every config group has one dataclass schema (a Hydra structured config).

``recsys.config.compose`` checks each composed group against its registered schema, so a misspelled or
ill-typed key fails at start-up with the dotted key named; code reads a group through :func:`typed`, which
returns the dataclass. A schema states each default once: a field without a default must be given by the
group's yaml, a field with one is left out of the yaml unless it differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from recsys.errors import ConfigError

T = TypeVar("T")


def missing_keys(cfg: DictConfig, prefix: str = "") -> list[str]:
    out: list[str] = []
    for key in cfg:
        name = f"{prefix}{key!s}"
        if OmegaConf.is_missing(cfg, key):
            out.append(name)
            continue
        value = cfg[key]
        if isinstance(value, DictConfig):
            out.extend(missing_keys(value, prefix=f"{name}."))
    return out


SchemaSelector = tuple[str, str] | None
"""``(key, value)``: the schema applies to the options of a group whose ``key`` equals ``value`` (e.g.
``("family", "dlrm")`` in group ``model``); ``None``: to every option of the group."""

_SCHEMAS: dict[str, list[tuple[SchemaSelector, type[Any]]]] = {}


def register_schema(group: str, schema: type[Any], when: SchemaSelector = None) -> None:
    """Declare the dataclass that options of ``group`` (a top-level key) must match. Registering the same
    schema again is a no-op, so importing a registering module twice is harmless."""
    entries = _SCHEMAS.setdefault(group, [])
    if (when, schema) not in entries:
        entries.append((when, schema))


def schema_for(group: str, node: Mapping[str, Any] | None) -> type[Any] | None:
    """The registered schema of ``group`` for this composed option, or ``None`` when none applies."""
    if node is None:
        return None
    for when, schema in _SCHEMAS.get(group, []):
        if when is None or str(node.get(when[0])) == when[1]:
            return schema
    return None


def registered_groups() -> list[str]:
    return sorted(_SCHEMAS)


def typed(schema: type[T], node: Any, where: str) -> T:
    """``node`` (a mapping or DictConfig) checked against the dataclass ``schema``, returned as an instance.

    Lists become tuples where the schema says ``tuple`` (the instances are frozen and hashable). Any
    unknown, missing or ill-typed key raises :class:`ConfigError` naming the dotted key under ``where``
    (e.g. ``model``); a value check in the schema's ``__post_init__`` raises its own :class:`ConfigError`.
    """
    if isinstance(node, schema):
        return node
    try:
        merged = OmegaConf.merge(_writable(OmegaConf.structured(schema)), _as_config(node))
        assert isinstance(merged, DictConfig)
        missing = missing_keys(merged)
        if missing:
            raise ConfigError(
                f"config key {where}.{missing[0]} must be set ({schema.__name__} has no default for it)."
            )
        instance = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise ConfigError(_describe(exc, where, schema)) from exc
    return _freeze(instance)  # type: ignore[no-any-return]


def _writable(node: Any) -> Any:
    """``node`` with the read-only flags of frozen dataclasses cleared: OmegaConf cannot merge a list into a
    tuple field of a nested frozen dataclass otherwise (``ListConfig is read-only``)."""
    if isinstance(node, DictConfig | ListConfig):
        OmegaConf.set_readonly(node, None)
        ref = node._metadata.ref_type
        nested = is_dataclass(ref) and isinstance(ref, type)
        if isinstance(node, DictConfig) and node._is_missing() and nested:
            # A nested dataclass without default: expanded here, else the merge builds it read-only.
            node._set_value(ref)
            OmegaConf.set_readonly(node, None)
        if node._is_missing() or node._is_none():
            return node
        if isinstance(node, DictConfig):
            for key in node:
                _writable(node._get_node(key))
        else:
            for index in range(len(node)):
                _writable(node._get_node(index))
    return node


def _as_config(node: Any) -> Any:
    if isinstance(node, DictConfig):
        # Resolved against its own root first: `${paths.root}` / `${data.user_attributes}` live outside it.
        return OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    if is_dataclass(node) and not isinstance(node, type):
        return OmegaConf.structured(node)
    return OmegaConf.create(dict(node) if isinstance(node, Mapping) else node)


def _describe(exc: OmegaConfBaseException, where: str, schema: type[Any]) -> str:
    key = getattr(exc, "full_key", None)
    first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    dotted = f"{where}.{key}" if key else where
    return f"config key {dotted}: {first_line} (schema {schema.__module__}.{schema.__name__})."


def _freeze(value: Any) -> Any:
    """Lists -> tuples inside dataclass instances (OmegaConf builds ``tuple`` fields as lists)."""
    if is_dataclass(value) and not isinstance(value, type):
        for f in fields(value):
            object.__setattr__(value, f.name, _freeze(getattr(value, f.name)))
        return value
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return {k: _freeze(v) for k, v in value.items()}
    return value


def as_dict(instance: Any) -> dict[str, Any]:
    """A typed config back to plain containers (tuples as lists): what is saved next to a model."""
    plain = OmegaConf.to_container(OmegaConf.structured(instance), resolve=True)
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items()}


def check_groups(cfg: DictConfig) -> None:
    """Check every composed group that has a registered schema (see :func:`register_schema`)."""
    for group in registered_groups():
        node = cfg.get(group)
        if not isinstance(node, DictConfig):
            continue
        schema = schema_for(group, node)
        if schema is not None:
            typed(schema, node, group)
