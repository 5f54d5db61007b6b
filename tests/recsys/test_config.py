"""Mandatory values are enforced with a message naming the key; the model variant swap; typed DLRM configs.

That every config file composes and is checked against its schema: tests/recsys/test_config_schema.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.config import compose, conf_dir, to_plain, typed
from recsys.errors import ConfigError


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def test_missing_path_is_reported_with_the_key() -> None:
    with pytest.raises(ConfigError, match=r"data\.path"):
        compose(["data=movielens_1m"])


def test_bad_override_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        compose(["data=does_not_exist"])


def test_every_dlrm_model_file_builds_a_typed_config() -> None:
    from models.dlrm.config import DLRMConfig

    for choice in _choices("model"):
        cfg = to_plain(compose([f"model={choice}"]))
        if cfg["model"]["family"] == "dlrm":
            parsed = typed(DLRMConfig, cfg["model"], "model")
            assert parsed.sparse_features and parsed.dense_arch_layer_sizes[-1] == parsed.embedding_dim


def test_model_variant_for_data_swaps_the_model_conf_and_keeps_its_overrides(tmp_path: Path) -> None:
    cfg = to_plain(compose(["model=dlrm", "data=criteo", f"data.path={tmp_path}", "model.interaction=dcn"]))
    assert cfg["model"]["name"] == "dlrm_criteo"
    assert cfg["model"]["interaction"] == "dcn"
    assert all(t["features"][0].startswith("cat_") for t in cfg["model"]["tables"])
    assert to_plain(compose(["model=dlrm"]))["model"]["name"] == "dlrm"


def test_a_key_only_the_schema_states_can_be_overridden_and_a_typo_still_fails() -> None:
    """`limit_train_batches` has its default in TrainerConfig, not in conf/trainer/cpu.yaml: overriding it
    works as if the yaml listed it, while a misspelled key is still refused."""
    cfg = compose(["trainer.limit_train_batches=5", "trainer.limit_val_batches=0.5"])
    assert cfg.trainer.limit_train_batches == 5 and cfg.trainer.limit_val_batches == 0.5
    assert compose([]).trainer.get("limit_train_batches") is None
    with pytest.raises(ConfigError, match=r"trainer\.limit_trian_batches"):
        compose(["trainer.limit_trian_batches=5"])
    with pytest.raises(ConfigError, match=r"trainer\.limit_train_batches"):
        compose(["trainer.limit_train_batches=abc"])
