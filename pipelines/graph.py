"""The stage graph: what a pipeline is made of, read from ``conf/pipeline/<name>.yaml``, and its order.

A pipeline is a named list of stages plus the Hydra overrides every stage starts from. A stage names a
*kind* (which entry point runs it, see :mod:`pipelines.kinds`), its own overrides (``model=ease``), the stages
whose outputs it reads (``needs``) and the folders it writes under ``<root>/<date>/`` (``outputs``). The
order is a topological sort of ``needs`` that keeps the declaration order among independent stages, so
the same file always runs in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from recsys.errors import ConfigError


@dataclass(frozen=True)
class StageSpec:
    """One node of the graph.

    Attributes:
        name: unique within the pipeline; names the marker file and the report row.
        kind: ``ingest``, ``features``, ``train``, ``evaluate`` or ``index`` (:data:`pipelines.kinds.KINDS`).
        overrides: Hydra overrides on top of the pipeline's, e.g. ``("model=ease",)``.
        needs: stages that must have finished first; their markers are this stage's input fingerprint.
        outputs: folders under ``<root>/<date>/`` the stage publishes; checked after it runs and before a
            rerun skips it.
        metric: the key metric shown in the summary (a key of the stage's metrics), or ``None``.
    """

    name: str
    kind: str
    overrides: tuple[str, ...]
    needs: tuple[str, ...]
    outputs: tuple[str, ...]
    metric: str | None


@dataclass(frozen=True)
class PipelineSpec:
    """A parsed ``conf/pipeline/<name>.yaml``; ``stages`` are in run order.

    ``hash_exclude`` names top-level config sections no stage reads (``bench``), left out of the stage
    config hashes so that editing them does not make finished stages run again.
    """

    name: str
    overrides: tuple[str, ...]
    stages: tuple[StageSpec, ...]
    hash_exclude: tuple[str, ...] = ()

    def stage(self, name: str) -> StageSpec:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise ConfigError(
            f"pipeline {self.name!r} has no stage {name!r}; stages: {', '.join(s.name for s in self.stages)}."
        )


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ConfigError(f"{where} must be a list of strings, got {value!r}.")
    return tuple(str(v) for v in value)


def parse_pipeline(pipeline_cfg: Mapping[str, Any] | None) -> PipelineSpec:
    """Read the ``pipeline`` node of the composed config (``pipeline=<name>``).

    Raises:
        ConfigError: no pipeline selected, a stage without kind, an unknown stage in ``needs``, a cycle.
    """
    if not pipeline_cfg:
        raise ConfigError(
            "no pipeline selected: pass pipeline=<name>, e.g. `recsys pipeline run pipeline=demo` "
            "(files in conf/pipeline/)."
        )
    name = str(pipeline_cfg.get("name", "pipeline"))
    stages_cfg = pipeline_cfg.get("stages")
    if not isinstance(stages_cfg, Mapping) or not stages_cfg:
        raise ConfigError(f"pipeline {name!r}: `stages` must be a non-empty mapping of stage name -> stage.")
    stages = []
    for stage_name, body in stages_cfg.items():
        where = f"pipeline {name!r}, stage {stage_name!r}"
        if not isinstance(body, Mapping) or not body.get("kind"):
            raise ConfigError(
                f"{where}: every stage needs a `kind` (ingest, features, train, evaluate, index)."
            )
        metric = body.get("metric")
        stages.append(
            StageSpec(
                name=str(stage_name),
                kind=str(body["kind"]),
                overrides=_strings(body.get("overrides"), f"{where}: overrides"),
                needs=_strings(body.get("needs"), f"{where}: needs"),
                outputs=_strings(body.get("outputs"), f"{where}: outputs"),
                metric=None if metric is None else str(metric),
            )
        )
    return PipelineSpec(
        name,
        _strings(pipeline_cfg.get("overrides"), f"pipeline {name!r}: overrides"),
        tuple(topological_order(name, stages)),
        _strings(pipeline_cfg.get("hash_exclude"), f"pipeline {name!r}: hash_exclude"),
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
