"""Typed ``model`` / ``bench`` / ``trainer`` configs of the neural families: a misspelled or ill-typed key
fails with the dotted key named (at compose time once the schemas are registered), the yaml inheritance
(``dlrm_criteo`` and reclora's ``conventional.dlrm`` are dlrm.yaml), saved configs round-trip, and the
``Trainer`` comes from the trainer group."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from models.common.trainer import build_trainer
from models.dlrm.config import DLRMBenchConfig, DLRMConfig
from models.dlrm.pyfunc import config_to_mapping, mapping_to_config
from models.reclora.config import RecLoRABenchSettings, RecLoRAConfig
from models.schemas import BENCH_SCHEMAS, register_model_schemas
from models.sequential.config import SequentialBenchSettings, SequentialConfig
from recsys.config import as_dict, compose, conf_dir, to_plain, typed
from recsys.errors import ConfigError
from recsys.settings import (
    FeaturesBenchSettings,
    RetrievalBenchSettings,
    ScalingBenchSettings,
    ServingBenchSettings,
    TrainerConfig,
)
from recsys.structured import schema_for

register_model_schemas()

# model conf -> (schema, a key of it, where that key sits under `model`)
FAMILIES: dict[str, tuple[type[Any], str]] = {
    "dlrm": (DLRMConfig, "embedding_dim"),
    "sasrec": (SequentialConfig, "hidden_dim"),
    "molar": (SequentialConfig, "hidden_dim"),
    "reclora": (RecLoRAConfig, "conventional.dlrm.embedding_dim"),
}


def _model(name: str) -> dict[str, Any]:
    model: dict[str, Any] = to_plain(compose([f"model={name}"]))["model"]
    return model


def _set(mapping: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node = mapping
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return mapping


@pytest.fixture(scope="module")
def models() -> dict[str, dict[str, Any]]:
    return {name: _model(name) for name in FAMILIES}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_misspelled_key_is_named(name: str, models: dict[str, dict[str, Any]]) -> None:
    schema, _ = FAMILIES[name]
    with pytest.raises(ConfigError, match=r"model\.embeding_dim"):
        typed(schema, {**models[name], "embeding_dim": 16}, "model")


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_ill_typed_value_is_named(name: str, models: dict[str, dict[str, Any]]) -> None:
    schema, key = FAMILIES[name]
    bad = _set(json.loads(json.dumps(models[name])), key, "abc")
    with pytest.raises(ConfigError, match=rf"model\.{key}"):
        typed(schema, bad, "model")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model=dlrm", "+model.embeding_dim=16"], r"model\.embeding_dim"),
        (["model=dcn", "model.embedding_dim=abc"], r"model\.embedding_dim"),
        (["model=sasrec", "+model.embeding_dim=16"], r"model\.embeding_dim"),
        (
            ["model=reclora", "model.conventional.dlrm.embedding_dim=abc"],
            r"model\.conventional\.dlrm\.embedding_dim",
        ),
        (["bench=sequential", "bench.epochs=abc"], r"bench\.epochs"),
    ],
)
def test_compose_checks_the_registered_schemas(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        compose(overrides)


def test_value_checks_keep_their_messages(models: dict[str, dict[str, Any]]) -> None:
    with pytest.raises(ConfigError, match=r"model\.interaction='cross'"):
        typed(DLRMConfig, {**models["dlrm"], "interaction": "cross"}, "model")
    with pytest.raises(ConfigError, match=r"model\.sigterm_broadcast_every_n_steps=0"):
        typed(DLRMConfig, {**models["dlrm"], "sigterm_broadcast_every_n_steps": 0}, "model")
    with pytest.raises(ConfigError, match=r"conf/model/sasrec\.yaml: loss must be full or sampled"):
        typed(SequentialConfig, {**models["sasrec"], "loss": "bpr"}, "model")
    with pytest.raises(ConfigError, match=r"architecture=molar needs a `molar:` block"):
        typed(SequentialConfig, {**models["sasrec"], "architecture": "molar"}, "model")
    with pytest.raises(ConfigError, match=r"model\.train\.few2many_fraction=0\.0"):
        reclora = json.loads(json.dumps(models["reclora"]))
        typed(RecLoRAConfig, _set(reclora, "train.few2many_fraction", 0.0), "model")


def test_registered_schemas() -> None:
    assert schema_for("model", {"family": "dlrm"}) is DLRMConfig
    assert schema_for("model", {"family": "sequential"}) is SequentialConfig
    assert schema_for("model", {"family": "reclora"}) is RecLoRAConfig
    expected = {
        "features": FeaturesBenchSettings,
        "retrieval": RetrievalBenchSettings,
        "dlrm": DLRMBenchConfig,
        "sequential": SequentialBenchSettings,
        "reclora": RecLoRABenchSettings,
        "serving": ServingBenchSettings,
        "scaling": ScalingBenchSettings,
    }
    assert expected == BENCH_SCHEMAS
    for name, schema in expected.items():
        assert schema_for("bench", {"name": name}) is schema


def test_every_bench_option_is_its_own_group_file() -> None:
    files = sorted(p.stem for p in (conf_dir() / "bench").glob("*.yaml"))
    assert files == sorted(BENCH_SCHEMAS)
    assert "bench" not in to_plain(compose([]))
    for name, schema in BENCH_SCHEMAS.items():
        bench = typed(schema, compose([f"bench={name}"])["bench"], "bench")
        assert bench.name == name


def test_config_modules_import_no_torch() -> None:
    code = "import sys, models.schemas; sys.exit(int(any(m in sys.modules for m in ('torch', 'lightning'))))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_dlrm_criteo_is_dlrm_with_the_criteo_columns(models: dict[str, dict[str, Any]]) -> None:
    criteo = _model("dlrm_criteo")
    differing = {k for k in criteo if criteo[k] != models["dlrm"][k]}
    assert differing == {"name", "tables", "attribute_tables", "dense_features", "epochs"}
    cfg = typed(DLRMConfig, criteo, "model")
    assert len(cfg.tables) == 26 and all(t.max_rows == 1_000_000 for t in cfg.tables)
    assert cfg.log1p_features == tuple(f"int_{i}" for i in range(13)) and cfg.identity_features == ()
    assert cfg.sigterm_broadcast_every_n_steps == 20 and cfg.malloc is not None


def test_reclora_conventional_model_is_dlrm_yaml(models: dict[str, dict[str, Any]]) -> None:
    rcfg = typed(RecLoRAConfig, models["reclora"], "model")
    assert rcfg.dlrm == typed(DLRMConfig, models["dlrm"], "model")
    assert rcfg.long_history == rcfg.conventional.long_history == 60
    assert (rcfg.retriever_modality, rcfg.retriever_pool) == ("text", None)


@pytest.mark.parametrize("name", ["dlrm", "dcn", "dlrm_criteo"])
def test_saved_dlrm_config_round_trips(name: str) -> None:
    cfg = typed(DLRMConfig, _model(name), "model")
    saved = json.loads(json.dumps(config_to_mapping(cfg)))
    assert saved["dense_features"] == {
        "log1p": list(cfg.log1p_features),
        "identity": list(cfg.identity_features),
    }
    assert mapping_to_config(saved) == cfg
    # configs saved before the schema lack family and the training-only keys
    old = {k: v for k, v in saved.items() if k not in ("family", "variant_for_data", "malloc")}
    assert mapping_to_config({**old, "sigterm_broadcast_every_n_steps": 1}).tables == cfg.tables


@pytest.mark.parametrize("name", ["sasrec", "molar"])
def test_saved_sequential_config_round_trips(name: str, models: dict[str, dict[str, Any]]) -> None:
    cfg = typed(SequentialConfig, models[name], "model")
    assert typed(SequentialConfig, json.loads(json.dumps(as_dict(cfg))), "model") == cfg


def test_trainer_comes_from_the_trainer_group() -> None:
    smoke = typed(TrainerConfig, compose(["trainer=smoke"])["trainer"], "trainer")
    trainer = build_trainer(smoke, max_epochs=1, logger=False, enable_checkpointing=False)
    assert (trainer.limit_train_batches, trainer.limit_val_batches, trainer.limit_test_batches) == (5, 2, 2)
    assert trainer.max_epochs == 1
    # the family decides what the group does not, and may override it
    trainer = build_trainer(smoke, logger=False, enable_checkpointing=False, limit_val_batches=0)
    assert trainer.limit_val_batches == 0
    cpu = typed(TrainerConfig, compose([])["trainer"], "trainer")
    assert cpu.limit_train_batches is None
    assert build_trainer(cpu, logger=False, enable_checkpointing=False).limit_train_batches == 1.0


def test_full_softmax_over_a_catalog_too_large_to_hold_is_refused_naming_sampled() -> None:
    sasrec = typed(SequentialConfig, compose(["model=sasrec"])["model"], "model")
    sasrec.check_catalog(1_683)  # MovieLens-100K: 0.08 GiB of logits
    # 64 x 200 x 100k float32 logits = 4.8 GiB: swap or the OOM killer, so the stage says what to do.
    with pytest.raises(
        ConfigError, match=r"loss: full.*4\.8 GiB.*full_softmax_max_gib=2.*model\.loss=sampled"
    ):
        sasrec.check_catalog(100_000)
    sampled = typed(SequentialConfig, compose(["model=sasrec", "model.loss=sampled"])["model"], "model")
    sampled.check_catalog(1_000_000)
