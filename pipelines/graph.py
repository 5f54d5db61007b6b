"""The stage graph: what a pipeline is made of, read from ``conf/pipeline/<name>.yaml``, and its order.

A pipeline is a named list of stages plus the Hydra overrides every stage starts from. A stage names a
*kind* (a stage of :data:`pipelines.stages.STAGES`, which also says what the stage publishes), its own
overrides (``model=ease``) and the stages whose outputs it reads (``needs``). The order is a topological sort
of ``needs`` that keeps the declaration order among independent stages, so the same file always runs in the
same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from recsys.config import typed
from recsys.errors import ConfigError


@dataclass
class StageConfig:
    """``pipeline.stages.<name>``: one node of the graph as the yaml states it (not frozen: OmegaConf builds
    the values of a ``dict[str, <frozen dataclass>]`` read-only and then cannot fill them in).

    Attributes:
        kind: a stage kind (``ingest``, ``features``, ``evaluate``, ``train``, ``index``, ``rerank``).
        overrides: Hydra overrides on top of the pipeline's, e.g. ``[model=ease]``.
        needs: stages that must have finished first; their markers are this stage's input fingerprint.
        metric: the key metric shown in the summary (a key of the stage's metrics), or null.
    """

    kind: str
    overrides: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    metric: str | None = None


@dataclass(frozen=True)
class ReportSettings:
    """``pipeline.report``: which split, cut-off and metrics the report's model table shows."""

    split: str
    k: int
    ranking_metrics: tuple[str, ...]


# Sections that say how commands run, never what they compute: editing them reruns nothing.
ALWAYS_UNHASHED = ("locks",)


@dataclass(frozen=True)
class PipelineConfig:
    """``conf/pipeline/<name>.yaml`` (group ``pipeline``).

    ``hash_exclude`` names top-level config sections no stage reads (``bench``), left out of the stage
    config hashes so that editing them does not make finished stages run again.
    """

    name: str
    report: ReportSettings
    stages: dict[str, StageConfig] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()
    hash_exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class StageSpec:
    """One node of the graph with its name (the key under ``pipeline.stages``)."""

    name: str
    kind: str
    overrides: tuple[str, ...]
    needs: tuple[str, ...]
    metric: str | None


@dataclass(frozen=True)
class PipelineSpec:
    """A parsed pipeline; ``stages`` are in run order."""

    name: str
    overrides: tuple[str, ...]
    stages: tuple[StageSpec, ...]
    hash_exclude: tuple[str, ...] = ()
    report: ReportSettings | None = None

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(
            f"pipeline {self.name!r} has no stage {name!r}; stages: {', '.join(s.name for s in self.stages)}."
        )


def parse_pipeline(pipeline_cfg: Mapping[str, Any] | None) -> PipelineSpec:
    """Read the ``pipeline`` node of the composed config (``pipeline=<name>``).

    Raises:
        ConfigError: no pipeline selected, no stages, an unknown or ill-typed key (named), an unknown stage
            in ``needs``, a cycle.
    """
    if not pipeline_cfg:
        raise ConfigError(
            "no pipeline selected: pass pipeline=<name>, e.g. `recsys pipeline run pipeline=demo` "
            "(files in conf/pipeline/)."
        )
    config = typed(PipelineConfig, pipeline_cfg, "pipeline")
    if not config.stages:
        raise ConfigError(f"pipeline {config.name!r}: `stages` must be a non-empty mapping of name -> stage.")
    stages = [
        StageSpec(str(name), body.kind, body.overrides, body.needs, body.metric)
        for name, body in config.stages.items()
    ]
    return PipelineSpec(
        config.name,
        config.overrides,
        tuple(topological_order(config.name, stages)),
        (*config.hash_exclude, *ALWAYS_UNHASHED),
        config.report,
    )


def topological_order(pipeline: str, stages: Sequence[StageSpec]) -> list[StageSpec]:
    """Kahn's algorithm; among stages that are ready, the one declared first goes first.

    Raises:
        ConfigError: a ``needs`` entry names no stage, or the stages depend on each other in a cycle
            (the message lists the stages on it).
    """
    by_name = {s.name: s for s in stages}
    for stage in stages:
        for need in stage.needs:
            if need not in by_name:
                raise ConfigError(
                    f"pipeline {pipeline!r}, stage {stage.name!r} needs unknown stage {need!r}; "
                    f"stages: {', '.join(by_name)}."
                )
    done: set[str] = set()
    order: list[StageSpec] = []
    pending = list(stages)
    while pending:
        ready = next((s for s in pending if all(n in done for n in s.needs)), None)
        if ready is None:
            raise ConfigError(f"pipeline {pipeline!r}: the needs of stages {_cycle(pending)} form a cycle.")
        order.append(ready)
        done.add(ready.name)
        pending.remove(ready)
    return order


def _cycle(pending: Sequence[StageSpec]) -> str:
    """One cycle among the stages that can never become ready, as ``a -> b -> a`` (a needs b needs a)."""
    by_name = {s.name: s for s in pending}
    path = [pending[0].name]
    while True:
        following = next(n for n in by_name[path[-1]].needs if n in by_name)
        if following in path:
            loop = [*path[path.index(following) :], following]
            return " -> ".join(loop)
        path.append(following)


def downstream(spec: PipelineSpec, name: str) -> set[str]:
    """``name`` and every stage that reads its outputs, directly or through other stages."""
    spec.stage(name)
    out = {name}
    for stage in spec.stages:  # topological order: a stage's needs come before it
        if any(n in out for n in stage.needs):
            out.add(stage.name)
    return out
