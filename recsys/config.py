"""Finds the shipped `conf/` tree and composes it with the user's ``key=value`` overrides.

The CLI, the pipelines and the tests all resolve configuration through :func:`compose`, so a run from the
command line and a run from a test see exactly the same values.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from recsys.errors import ConfigError
from recsys.settings import register_core_schemas
from recsys.structured import as_dict, check_groups, missing_keys, register_schema, schema_for, typed

# The typed-config functions are used through this module everywhere (one import for config work).
__all__ = ["add_config_dirs", "as_dict", "compose", "conf_dir", "register_schema", "to_plain", "typed"]

CONF_ENV = "RECSYS_CONF_DIR"
# Folders of the user's own config files (os.pathsep-separated), searched before the bundled tree: a
# `data/mine.yaml` there makes `data=mine` composable beside the bundled options. An environment variable,
# so the processes a command starts (training ranks, Spark workers) compose the same way.
CONFIG_PATH_ENV = "RECSYS_CONFIG_PATH"

# `${abspath:runs}` in conf: MLflow's SQLite URI and artifact root must not depend on the working folder.
OmegaConf.register_new_resolver("abspath", lambda p: str(Path(str(p)).expanduser().resolve()), replace=True)


def conf_dir() -> Path:
    """The config tree: ``$RECSYS_CONF_DIR`` when set, else the copy installed as package ``recsys.conf``."""
    override = os.environ.get(CONF_ENV)
    if override:
        return Path(override).resolve()
    return Path(str(resources.files("recsys.conf"))).resolve()


def add_config_dirs(folders: list[str]) -> None:
    """Search ``folders`` (in order) before the bundled config tree from now on, in this process and the
    processes it starts.

    Raises:
        ConfigError: a folder that does not exist.
    """
    known = [p for p in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if p]
    for folder in folders:
        path = Path(folder).expanduser().resolve()
        if not path.is_dir():
            raise ConfigError(f"--config-dir {folder}: not a folder (resolved to {path}).")
        if str(path) not in known:
            known.append(str(path))
    if known:
        os.environ[CONFIG_PATH_ENV] = os.pathsep.join(known)


def user_config_dirs() -> list[Path]:
    """The folders of ``$RECSYS_CONFIG_PATH``, each checked to exist."""
    folders = [Path(p) for p in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if p]
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"${CONFIG_PATH_ENV}: {folder} is not a folder.")
    return folders


def _hydra_compose(overrides: list[str], config_name: str) -> DictConfig:
    folders = user_config_dirs()
    search = [f"hydra.searchpath=[{','.join(f'file://{f}' for f in folders)}]"] if folders else []
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=[*search, *overrides])
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(f"cannot compose config with overrides {overrides}: {exc}") from exc


def _schema_has(schema: type[Any], dotted: str) -> bool:
    """Whether ``dotted`` (``limit_train_batches``, ``malloc.mmap_threshold_mib``) is a schema field."""
    node: Any = OmegaConf.structured(schema)
    for part in dotted.split("."):
        # keys(), not `in node`: a field without default (MISSING) is a field too.
        if not isinstance(node, DictConfig) or part not in set(node.keys()):
            return False
        node = node._get_node(part)
    return True


def _with_schema_defaults(overrides: list[str], config_name: str) -> list[str]:
    """Overrides of keys that only a schema states (a default the group's yaml leaves out, e.g.
    ``trainer.limit_train_batches=5``) made ``++`` so Hydra adds them; any other key is left for Hydra to
    refuse (a typo stays an error)."""
    selections = [o for o in overrides if "." not in o.split("=", 1)[0]]
    base = _hydra_compose(selections, config_name)
    register_core_schemas()
    out = []
    for override in overrides:
        key, sep, value = override.partition("=")
        group, _, rest = key.partition(".")
        node = base.get(group) if sep and rest and not key.startswith(("+", "~")) else None
        if isinstance(node, DictConfig) and OmegaConf.select(base, key, default=None) is None:
            schema = schema_for(group, node)
            if schema is not None and _schema_has(schema, rest):
                override = f"++{key}={value}"
        out.append(override)
    return out


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """Compose the root config with Hydra overrides and check that every mandatory value is set."""
    requested = list(overrides or [])
    try:
        cfg = _hydra_compose(requested, config_name)
    except ConfigError:
        widened = _with_schema_defaults(requested, config_name)
        if widened == requested:
            raise
        cfg = _hydra_compose(widened, config_name)
    variant = _model_variant(cfg)
    if variant is not None:
        # e.g. `model=dlrm data=criteo`: the Criteo columns need the dlrm_criteo table mapping.
        kept = [o for o in overrides or [] if not o.lstrip("+~").startswith("model=")]
        return compose([*kept, f"model={variant}"], config_name)
    missing = sorted(missing_keys(cfg))
    if missing:
        raise ConfigError(
            f"config value(s) {', '.join(missing)} must be set, e.g. `recsys features {missing[0]}=...`."
        )
    register_core_schemas()
    check_groups(cfg)
    return cfg


def _model_variant(cfg: DictConfig) -> str | None:
    """The model conf that ``model.variant_for_data`` names for this data set, if any and not already it."""
    model, data = cfg.get("model"), cfg.get("data")
    if not isinstance(model, DictConfig) or not isinstance(data, DictConfig):
        return None
    variants = model.get("variant_for_data") or {}
    variant = variants.get(data.get("name"))
    return None if variant is None or variant == model.get("name") else str(variant)


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """Resolved config as plain Python containers (for hashing, logging and dataclass construction)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items()}
