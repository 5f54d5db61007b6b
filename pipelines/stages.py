"""The stage registry: one typed :class:`Stage` per kind, run the same way by ``recsys <verb>`` and by the
pipeline runner (:func:`run_stage`).

A stage declares the config groups it reads (its MLflow params), the stage folders it needs (checked before
it starts) and the folders it publishes (fingerprinted into its success marker). Model families are looked up
by ``model.family`` in :data:`FAMILIES`, whose loaders import the family only when its stage runs, so a rerun
that skips everything imports neither torch nor Spark.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from models.schemas import register_model_schemas
from pipelines.graph import PipelineConfig
from recsys import locks
from recsys.config import register_schema
from recsys.console import console
from recsys.errors import ConfigError, InputError
from recsys.manifest import remove_stale_staging
from recsys.paths import EVALUATE, FEATURES, INDEX, INGEST, RERANK, TRAIN, RunPaths
from recsys.scoring import candidate_models, register_scorer_source, reranked_retriever, retriever_folder
from recsys.settings import GPU_ACCELERATORS, TrainerConfig
from recsys.stage import ModelFamily, ScorerSource, StageResult
from recsys.structured import typed
from recsys.tracking.runs import TAG_OUTPUTS, StageScope, close_orphans, current_scope, stage_scope


def register_schemas() -> None:
    """Every group schema above the core (the core's are registered by ``compose`` itself): the model
    families' and benchmarks' (``models.schemas``) and the pipeline's."""
    register_model_schemas()
    register_schema("pipeline", PipelineConfig)


register_schemas()

SPLIT_OUTPUT = "split"
INTERACTIONS_OUTPUT = "interactions"


def _baseline() -> ModelFamily:
    from pipelines.jobs import evaluate_stage
    from recsys.offline import BaselineScorerSource
    from recsys.tracking.retriever import FoldInRetriever

    return ModelFamily(
        "baseline", evaluate=evaluate_stage, retriever=FoldInRetriever(), scorer=BaselineScorerSource()
    )


def _dlrm() -> ModelFamily:
    from models.dlrm.train import FAMILY

    return FAMILY


def _sequential() -> ModelFamily:
    from models.sequential.train import FAMILY

    return FAMILY


def _reclora() -> ModelFamily:
    from models.reclora.train import FAMILY

    return FAMILY


FAMILIES: dict[str, Callable[[], ModelFamily]] = {
    "baseline": _baseline,
    "dlrm": _dlrm,
    "sequential": _sequential,
    "reclora": _reclora,
}
"""``model.family`` -> the family's contract (imported on first use)."""


def _scorer_loader(family: Callable[[], ModelFamily]) -> Callable[[], ScorerSource | None]:
    return lambda: family().scorer


for _name, _loader in FAMILIES.items():
    register_scorer_source(_name, _scorer_loader(_loader))

FAMILY_STAGES: dict[str, tuple[str, ...]] = {
    "baseline": (EVALUATE, INDEX),
    "dlrm": (TRAIN, RERANK),
    "sequential": (TRAIN, INDEX),
    "reclora": (TRAIN,),
}
"""The model stages each family has, known without importing it (plans and the command line check a
family's stage before any stage runs); a test checks it against the families' contracts."""

# Kinds that run one model family's stage (the others read no model).
MODEL_KINDS = (EVALUATE, TRAIN, INDEX, RERANK)


def _family_name(cfg: Mapping[str, Any]) -> str:
    model = cfg["model"]
    name = str(model.get("family"))
    if name not in FAMILIES:
        raise ConfigError(
            f"model={model.get('name')} has family {name!r}, which no stage knows; "
            f"families: {', '.join(sorted(FAMILIES))}."
        )
    return name


def family_of(cfg: Mapping[str, Any]) -> ModelFamily:
    return FAMILIES[_family_name(cfg)]()


def check_family_stage(kind: str, cfg: Mapping[str, Any]) -> None:
    """Refuse, before anything runs, a model stage the configured model's family does not have, naming the
    verbs that do handle that model."""
    if kind not in MODEL_KINDS:
        return
    family = _family_name(cfg)
    if kind not in FAMILY_STAGES[family]:
        verbs = " / ".join(f"`recsys {k} model={_model(cfg)}`" for k in FAMILY_STAGES[family])
        raise ConfigError(f"model={_model(cfg)} (family {family}) has no {kind} stage; its stages: {verbs}.")
    if kind == TRAIN:
        _check_trainer(typed(TrainerConfig, cfg["trainer"], "trainer"))


def _launched() -> bool:
    """Whether this process is one rank of a launch (torchrun, or our own local launcher)."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


def _check_trainer(trainer: TrainerConfig) -> None:
    """The devices a training asks for exist here, and a multi-node one was started by torchrun. Torch is
    imported only to count GPUs: planning a CPU pipeline stays free of it."""
    if trainer.accelerator in GPU_ACCELERATORS:
        from models.common.trainer import require_accelerator

        require_accelerator(trainer)
    if trainer.num_nodes > 1 and not _launched():
        raise ConfigError(
            f"trainer.num_nodes={trainer.num_nodes}: a multi-node training is started by torchrun on every "
            "node (`torchrun --nnodes=N --nproc-per-node=DEVICES ... -m recsys.cli train ...`, "
            "pipelines/examples/README.md); this command was not."
        )


def _model(cfg: Mapping[str, Any]) -> str:
    return str(cfg["model"]["name"])


def _family_stage(kind: str, cfg: Mapping[str, Any]) -> Callable[[Mapping[str, Any]], StageResult]:
    """The family's function for ``kind`` (checked by :func:`check_family_stage` first)."""
    check_family_stage(kind, cfg)
    function = getattr(family_of(cfg), kind)
    assert function is not None, f"FAMILY_STAGES lists {kind} for a family without that stage"
    return function  # type: ignore[no-any-return]


def _candidate_folders(paths: RunPaths, cfg: Mapping[str, Any]) -> tuple[Path, ...]:
    """The published models a candidate ranker reads (its retriever and score-feature models)."""
    return tuple(retriever_folder(paths, n) for n in candidate_models(cfg["model"]))


def _rerank_needs(paths: RunPaths, cfg: Mapping[str, Any]) -> tuple[Path, ...]:
    retrievers = _candidate_folders(paths, cfg) or (paths.evaluate(_reranked(cfg)),)
    return (paths.features / SPLIT_OUTPUT, paths.train(_model(cfg)), *retrievers)


def _reranked(cfg: Mapping[str, Any]) -> str:
    return reranked_retriever(cfg["model"], cfg["evaluation"])


def _ingest(cfg: Mapping[str, Any]) -> StageResult:
    from features.run import ingest_stage

    return ingest_stage(cfg)


def _features(cfg: Mapping[str, Any]) -> StageResult:
    from features.run import features_stage

    return features_stage(cfg)


def _evaluate(cfg: Mapping[str, Any]) -> StageResult:
    return _family_stage(EVALUATE, cfg)(cfg)


def _train(cfg: Mapping[str, Any]) -> StageResult:
    """The family's trainer, in this process or, with ``trainer.devices > 1``, in that many local processes
    (unless this process already is one rank of a launch, e.g. under ``torchrun``)."""
    train = _family_stage(TRAIN, cfg)
    devices = int(cfg["trainer"]["devices"])
    if devices > 1 and not _launched():
        from models.common.launch import launch_local

        # Lightning would otherwise start the extra processes by re-running this command line (the whole
        # pipeline, from the runner); under the launcher every process joins the group it set up.
        return launch_local(_train_worker, devices, dict(cfg), current_scope())[0]  # type: ignore[no-any-return]
    return train(cfg)


def _train_worker(cfg: dict[str, Any], tracking_scope: StageScope | None) -> StageResult:
    """One rank of a multi-process training (a module-level function: spawned processes import it); its
    MLflow run belongs to the same stage scope as in the launching process."""
    with stage_scope(tracking_scope):
        return _family_stage(TRAIN, cfg)(cfg)


def _index(cfg: Mapping[str, Any]) -> StageResult:
    from pipelines.jobs import index_stage

    check_family_stage(INDEX, cfg)
    family = family_of(cfg)
    assert family.retriever is not None, "FAMILY_STAGES lists index for a family without a retriever"
    return index_stage(cfg, family.retriever)


def _rerank(cfg: Mapping[str, Any]) -> StageResult:
    return _family_stage(RERANK, cfg)(cfg)


def _train_outputs(paths: RunPaths, cfg: Mapping[str, Any]) -> tuple[Path, ...]:
    return (paths.train(_model(cfg)),)


@dataclass(frozen=True)
class Stage:
    """One kind of stage.

    Attributes:
        kind: its name (``pipeline.stages.<name>.kind`` and the ``recsys`` verb).
        reads: the config groups it reads; only these are logged as its MLflow params.
        needs: the stage folders it reads, given the run paths and its config (checked before it runs).
        publishes: the stage folders it publishes (fingerprinted into its success marker).
        run: the work; returns the shared result.
    """

    kind: str
    reads: tuple[str, ...]
    needs: Callable[[RunPaths, Mapping[str, Any]], tuple[Path, ...]]
    publishes: Callable[[RunPaths, Mapping[str, Any]], tuple[Path, ...]]
    run: Callable[[Mapping[str, Any]], StageResult]


STAGES: dict[str, Stage] = {
    INGEST: Stage(
        INGEST,
        reads=("data", "features", "spark"),
        needs=lambda p, c: (),
        publishes=lambda p, c: (p.ingest,),
        run=_ingest,
    ),
    FEATURES: Stage(
        FEATURES,
        reads=("data", "features", "spark"),
        needs=lambda p, c: (p.ingest / INTERACTIONS_OUTPUT,),
        publishes=lambda p, c: (p.features,),
        run=_features,
    ),
    EVALUATE: Stage(
        EVALUATE,
        reads=("model", "evaluation"),
        needs=lambda p, c: (p.features / SPLIT_OUTPUT,),
        publishes=lambda p, c: (p.evaluate(_model(c)),),
        run=_evaluate,
    ),
    TRAIN: Stage(
        TRAIN,
        reads=("model", "trainer", "evaluation", "index"),
        needs=lambda p, c: (p.features / SPLIT_OUTPUT, *_candidate_folders(p, c)),
        publishes=_train_outputs,
        run=_train,
    ),
    INDEX: Stage(
        INDEX,
        reads=("model", "index", "evaluation"),
        needs=lambda p, c: (p.features / SPLIT_OUTPUT, retriever_folder(p, _model(c))),
        publishes=lambda p, c: (p.index(_model(c), str(c["index"]["name"])), p.candidates(_model(c))),
        run=_index,
    ),
    RERANK: Stage(
        RERANK,
        reads=("model", "evaluation"),
        needs=_rerank_needs,
        publishes=lambda p, c: (p.rerank(_model(c), _reranked(c)),),
        run=_rerank,
    ),
}


def stage(kind: str) -> Stage:
    if kind not in STAGES:
        raise ConfigError(f"unknown stage kind {kind!r}; kinds: {', '.join(STAGES)}.")
    return STAGES[kind]


def missing_inputs(kind: str, cfg: Mapping[str, Any]) -> list[Path]:
    """The folders ``kind`` needs that are not published (no ``manifest.json``)."""
    paths = RunPaths.from_cfg(cfg)
    return [p for p in stage(kind).needs(paths, cfg) if not (p / "manifest.json").is_file()]


def scope(kind: str, name: str, parent_run_id: str | None = None) -> AbstractContextManager[None]:
    """The tracking scope of one stage run: its MLflow runs are nested under ``parent_run_id`` (the
    pipeline's run), tagged with the stage name and kind, and log the groups the kind reads as params."""
    return stage_scope(StageScope(name, stage(kind).reads, parent_run_id, {"stage_kind": kind}))


def stage_locks(kinds: tuple[str, ...], cfg: Mapping[str, Any]) -> AbstractContextManager[None]:
    """The locks of running ``kinds`` one after another in this process (a command that builds features
    before evaluating takes them all before it starts, so it refuses before doing any work)."""
    paths = RunPaths.from_cfg(cfg)
    locks.configure(cfg.get("locks"))
    writes = [folder for kind in kinds for folder in stage(kind).publishes(paths, cfg)]
    reads = [folder for kind in kinds for folder in stage(kind).needs(paths, cfg)]
    return locks.stage_locks(writes, reads)


def run_stage(kind: str, cfg: Mapping[str, Any]) -> StageResult:
    """Run one stage: take its locks, check that what it needs is published, then run it.

    The stage holds the writer lock of every folder it publishes (the same stage started twice waits, then
    refuses naming the holder) and a shared lock on every folder it reads (nobody replaces an input while
    it runs); see :mod:`recsys.locks`.

    Raises:
        InputError: an input folder is missing (the message names it and the command that makes it).
        ConfigError: unknown kind, or a model family without this stage.
        LockTimeoutError: another command kept a lock this stage needs past ``locks.wait_s``.
    """
    check_family_stage(kind, cfg)
    paths = RunPaths.from_cfg(cfg)
    writes = stage(kind).publishes(paths, cfg)
    with stage_locks((kind,), cfg):
        for folder in writes:
            remove_stale_staging(folder.parent, recursive=False)
        missing = missing_inputs(kind, cfg)
        if missing:
            raise InputError(
                f"stage {kind} needs {', '.join(str(m) for m in missing)}, which is not published yet; run "
                "the stage that writes it first (`recsys features`, `recsys evaluate model=...` or `recsys "
                "train model=...` for the same paths.root and run.date)."
            )
        scope = current_scope()
        if scope is None:
            return stage(kind).run(cfg)
        # Runs are tagged with the outputs the stage publishes: a rerun, holding their writer locks, closes
        # the runs a killed process of the same stage left RUNNING.
        outputs = ",".join(sorted(paths.relative(p) for p in writes))
        for orphan in close_orphans(cfg, outputs=outputs):
            console.print(f"MLflow run {orphan} of a killed {scope.stage} stage marked FAILED")
        with stage_scope(replace(scope, tags={**scope.tags, TAG_OUTPUTS: outputs})):
            return stage(kind).run(cfg)
