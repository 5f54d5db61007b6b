"""The stage registry (``pipelines.stages``): each kind's contract (config groups read, folders needed and
published), the input check before a stage runs, the tracking scope, and the model families by option."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipelines import stages as registry
from pipelines.stages import FAMILIES, STAGES, family_of, missing_inputs, run_stage, scope
from recsys.config import compose, conf_dir, to_plain
from recsys.errors import ConfigError, InputError
from recsys.paths import RunPaths
from recsys.stage import ModelFamily
from recsys.tracking.runs import current_scope, stage_params

DATE = "2026-01-02"
KINDS = ("ingest", "features", "evaluate", "train", "index", "rerank")
# model option (conf/model/<option>.yaml) -> its family and the stages that family has.
EXPECTED_FAMILIES: dict[str, tuple[str, set[str]]] = {
    "mostpop": ("baseline", {"evaluate", "retriever", "scorer"}),
    "itemknn": ("baseline", {"evaluate", "retriever", "scorer"}),
    "ease": ("baseline", {"evaluate", "retriever", "scorer"}),
    "puresvd": ("baseline", {"evaluate", "retriever", "scorer"}),
    "dlrm": ("dlrm", {"train", "rerank"}),
    "dcn": ("dlrm", {"train", "rerank"}),
    "dlrm_criteo": ("dlrm", {"train", "rerank"}),
    "ranker": ("dlrm", {"train", "rerank"}),
    "sasrec": ("sequential", {"train", "retriever", "scorer"}),
    "molar": ("sequential", {"train", "retriever", "scorer"}),
    "reclora": ("reclora", {"train"}),
}
CONTRACT_FIELDS = ("train", "evaluate", "retriever", "rerank", "scorer")


def _cfg(root: Path, *overrides: str) -> dict[str, Any]:
    return to_plain(compose([f"paths.root={root}", f"run.date={DATE}", *overrides]))


def _publish(folder: Path) -> None:
    """A published folder as the input check sees it: a manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text("{}")


def test_every_kind_declares_what_it_reads_needs_and_publishes(tmp_path: Path) -> None:
    assert tuple(STAGES) == KINDS
    cfg = _cfg(tmp_path, "model=puresvd", "index=hnsw")
    paths = RunPaths.from_cfg(cfg)
    for kind, stage in STAGES.items():
        assert stage.kind == kind
        assert stage.reads and all(group in cfg for group in stage.reads), kind
        needs, publishes = stage.needs(paths, cfg), stage.publishes(paths, cfg)
        assert isinstance(needs, tuple) and isinstance(publishes, tuple) and publishes, kind
        for folder in (*needs, *publishes):
            assert folder.is_relative_to(paths.run), (kind, folder)
        assert callable(stage.run)
    relative = {
        kind: (
            [paths.relative(p) for p in stage.needs(paths, cfg)],
            [paths.relative(p) for p in stage.publishes(paths, cfg)],
        )
        for kind, stage in STAGES.items()
    }
    assert relative["ingest"] == ([], ["ingest"])
    assert relative["features"] == (["ingest/interactions"], ["features"])
    assert relative["evaluate"] == (["features/split"], ["evaluate/puresvd"])
    assert relative["train"] == (["features/split"], ["train/puresvd"])
    assert relative["index"] == (
        ["features/split", "evaluate/puresvd"],
        ["index/puresvd-hnsw", "candidates/puresvd"],
    )
    ranker = _cfg(tmp_path, "model=dlrm")
    assert [paths.relative(p) for p in STAGES["rerank"].needs(paths, ranker)] == [
        "features/split",
        "train/dlrm",
        "evaluate/puresvd",  # evaluation.rerank_retriever
    ]
    assert [paths.relative(p) for p in STAGES["rerank"].publishes(paths, ranker)] == ["rerank/dlrm-puresvd"]
    # Only what a stage reads becomes its MLflow params: no Spark or trainer settings on an evaluate run.
    assert "spark" not in STAGES["evaluate"].reads and "trainer" not in STAGES["evaluate"].reads
    assert "trainer" in STAGES["train"].reads and "spark" in STAGES["features"].reads


def test_run_stage_refuses_an_input_that_is_not_published(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "model=ease")
    paths = RunPaths.from_cfg(cfg)
    with pytest.raises(InputError, match=rf"stage evaluate needs {paths.features / 'split'}, which is not"):
        run_stage("evaluate", cfg)
    with pytest.raises(InputError, match=rf"stage features needs {paths.ingest / 'interactions'}, "):
        run_stage("features", cfg)
    # A folder without its manifest is not published (a killed writer's leftovers).
    (paths.features / "split").mkdir(parents=True)
    assert missing_inputs("index", cfg) == [paths.features / "split", paths.evaluate("ease")]
    with pytest.raises(InputError, match=r"stage index needs .*features/split"):
        run_stage("index", _cfg(tmp_path, "model=puresvd"))
    # Rerank: every missing input is named, the published one is not.
    _publish(paths.features / "split")
    ranker = _cfg(tmp_path, "model=dlrm")
    assert missing_inputs("rerank", ranker) == [paths.train("dlrm"), paths.evaluate("puresvd")]
    with pytest.raises(InputError) as refused:
        run_stage("rerank", ranker)
    message = str(refused.value)
    assert str(paths.train("dlrm")) in message and str(paths.evaluate("puresvd")) in message
    assert str(paths.features / "split") not in message
    # Refused before doing anything: no MLflow store, no stage folder.
    assert sorted(p.name for p in paths.run.iterdir()) == ["_locks", "features"]
    assert not (tmp_path / "mlflow.db").exists()


def test_unknown_kind_and_unknown_family_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown stage kind 'trainn'; kinds: ingest, features"):
        run_stage("trainn", _cfg(tmp_path))
    with pytest.raises(ConfigError, match=r"model=m has family 'nope', which no stage knows; families: "):
        family_of({"model": {"name": "m", "family": "nope"}})


def _model_options() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "model").glob("*.yaml"))


def test_every_model_option_is_listed_here() -> None:
    assert _model_options() == sorted(EXPECTED_FAMILIES)
    assert set(FAMILIES) == {family for family, _ in EXPECTED_FAMILIES.values()}


@pytest.mark.parametrize("option", _model_options())
def test_family_of_every_model_option_has_the_expected_stages(option: str) -> None:
    cfg = to_plain(compose([f"model={option}"]))
    family = family_of(cfg)
    name, stages = EXPECTED_FAMILIES[option]
    assert isinstance(family, ModelFamily)
    assert family.name == name == cfg["model"]["family"]
    assert {s for s in CONTRACT_FIELDS if getattr(family, s) is not None} == stages


@pytest.mark.parametrize("option", _model_options())
def test_the_static_stage_list_matches_each_family_contract(option: str) -> None:
    """Plans and the command line check a family's stages from ``FAMILY_STAGES`` without importing the
    family: it must say exactly what the family's contract has (``index`` = it has a retriever)."""
    cfg = to_plain(compose([f"model={option}"]))
    family = family_of(cfg)
    declared = set(registry.FAMILY_STAGES[family.name])
    actual = {k for k in ("train", "evaluate", "rerank") if getattr(family, k) is not None}
    if family.retriever is not None:
        actual.add("index")
    assert declared == actual


def test_baseline_families_and_planning_import_no_torch() -> None:
    """A rerun that skips everything (and a baseline's stages) never pays for importing torch."""
    code = (
        "import sys\n"
        "from pipelines.runner import plan\n"
        "from pipelines.stages import family_of\n"
        "from recsys.config import compose, to_plain\n"
        "for model in ('mostpop', 'itemknn', 'ease', 'puresvd'):\n"
        "    family_of(to_plain(compose([f'model={model}'])))\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_scope_logs_only_the_groups_the_stage_reads(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, "model=ease")
    assert current_scope() is None
    with scope("evaluate", "evaluate_ease", "parent-run"):
        active = current_scope()
        assert active is not None
        assert (active.stage, active.parent_run_id) == ("evaluate_ease", "parent-run")
        assert active.groups == STAGES["evaluate"].reads and active.tags == {"stage_kind": "evaluate"}
        params = stage_params(cfg, active.groups)
    assert current_scope() is None
    assert params["model.name"] == "ease" and params["seed"] == "42" and params["prefix"] == "recsys"
    assert any(k.startswith("evaluation.") for k in params)
    assert not [k for k in params if k.split(".")[0] not in {"model", "evaluation", "seed", "prefix"}]
