"""``recsys pipeline run``: run the stage graph once, skipping what is already done.

For every stage, in topological order, the runner composes the stage's own config (the pipeline's
overrides, then the stage's, then the user's command-line overrides, later ones winning per key) and
decides whether its success marker is still valid: same config hash, same upstream marker digests, outputs
present and unchanged. A valid stage is skipped; any other runs and, when it returns, its declared outputs
are checked and its marker is written last. So a run killed at any point resumes on the next call with the
stage it was in, and a scheduler only ever has to call the same command again.

Only one run per ``<root>/<date>`` at a time: a lock file (``flock``, released by the kernel even on
``kill -9``) guards the run folder, and staging folders a killed run left behind are removed under it.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines import stages as registry
from pipelines.graph import PipelineSpec, ReportSettings, StageSpec, downstream, parse_pipeline
from pipelines.markers import (
    Marker,
    changed_keys,
    fingerprint_outputs,
    markers_dir,
    read_marker,
    remove_marker,
    started_path,
    write_json_atomically,
    write_marker,
)
from pipelines.report import StageRow, print_summary, report_is_current, write_report
from recsys import locks
from recsys.config import compose, to_plain
from recsys.console import console, print_result
from recsys.errors import ConfigError, RecsysError
from recsys.manifest import config_hash, remove_stale_staging
from recsys.paths import RunPaths
from recsys.resources import ResourceMonitor
from recsys.tracking.runs import close_orphans, end_pipeline_run, start_pipeline_run

LOCK_FILE = ".lock"
# Changed config keys named in the "why" column when a stage reruns.
MAX_KEYS_SHOWN = 3
RAN, SKIPPED, FAILED, NOT_RUN = "ran", "skipped", "failed", "not run"


class StageError(RecsysError):
    """A stage finished without publishing an output it declares."""


@dataclass(frozen=True)
class PlannedStage:
    """A stage with its composed config; ``hashed`` is the part of it the config hash covers; ``outputs`` the
    folders (relative to the run folder) its kind publishes with this config."""

    spec: StageSpec
    cfg: dict[str, Any]
    hashed: dict[str, Any]
    config_hash: str
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class PipelineRun:
    """What :func:`run_pipeline` returns: where it ran and what happened to each stage."""

    name: str
    run_folder: Path
    results: list[StageRow]
    seconds: float
    report_dir: Path | None


def _override_key(override: str) -> str:
    return override.lstrip("~+").split("=", 1)[0].strip()


def merge_overrides(*layers: Sequence[str]) -> list[str]:
    """Concatenate override lists; for a key given more than once only the last one is kept."""
    merged: dict[str, str] = {}
    for layer in layers:
        for override in layer:
            key = _override_key(override)
            merged.pop(key, None)
            merged[key] = override
    return list(merged.values())


def _is_pipeline_override(override: str) -> bool:
    key = _override_key(override)
    return key == "pipeline" or key.startswith("pipeline.")


def _stage_hash(spec: StageSpec, outputs: Sequence[str], hashed: Mapping[str, Any]) -> str:
    return config_hash({"kind": spec.kind, "outputs": list(outputs), "config": dict(hashed)})


def plan(spec: PipelineSpec, user_overrides: Sequence[str]) -> tuple[dict[str, Any], list[PlannedStage]]:
    """Compose the base config and every stage's config; check every kind exists before anything runs."""
    base = to_plain(compose(merge_overrides(spec.overrides, user_overrides)))
    planned = []
    for stage in spec.stages:
        try:
            cfg = to_plain(compose(merge_overrides(spec.overrides, stage.overrides, user_overrides)))
        except ConfigError as exc:
            raise ConfigError(f"stage {stage.name!r} (overrides {list(stage.overrides)}): {exc}") from exc
        for key, section in (("root", "paths"), ("date", "run")):
            if cfg[section][key] != base[section][key]:
                raise ConfigError(
                    f"stage {stage.name!r} sets {section}.{key}={cfg[section][key]!r}, but every stage of a "
                    f"pipeline must write to the same run folder ({section}.{key}={base[section][key]!r})."
                )
        try:
            kind = registry.stage(stage.kind)
            registry.check_family_stage(stage.kind, cfg)
        except ConfigError as exc:
            raise ConfigError(f"stage {stage.name!r}: {exc}") from exc
        paths = RunPaths.from_cfg(cfg)
        outputs = tuple(paths.relative(p) for p in kind.publishes(paths, cfg))
        hashed = {k: v for k, v in cfg.items() if k not in spec.hash_exclude}
        planned.append(PlannedStage(stage, cfg, hashed, _stage_hash(stage, outputs, hashed), outputs))
    return base, planned


def _run_lock(run_folder: Path) -> Any:
    """One ``recsys pipeline run`` per run folder; a second refuses at once, naming the holder."""
    folder = markers_dir(run_folder)
    return locks.exclusive(
        folder / LOCK_FILE,
        f"run folder {run_folder} (another `recsys pipeline run`)",
        "Wait for it to finish (a killed run releases the lock), or run another date or paths.root.",
        wait_s=0,
    )


def _why_rerun(
    marker: Marker | None, stage: PlannedStage, inputs: dict[str, str], outputs: dict[str, str | None]
) -> str | None:
    """Why the stage must run, or ``None`` when its marker is still valid."""
    if marker is None:
        return "not done yet"
    if marker.config_hash != stage.config_hash:
        keys = changed_keys(marker.config, stage.hashed)
        return f"config changed ({', '.join(keys[:MAX_KEYS_SHOWN])})" if keys else "config changed"
    if marker.inputs != inputs:
        changed = sorted(k for k in set(inputs) | set(marker.inputs) if inputs.get(k) != marker.inputs.get(k))
        return f"inputs changed ({', '.join(changed)})"
    missing = [k for k, v in outputs.items() if v is None]
    if missing:
        return f"outputs missing ({', '.join(missing)})"
    if marker.outputs != outputs:
        return "outputs changed since it finished"
    return None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def stages_to_redo(spec: PipelineSpec, force: bool, from_stage: str | None) -> set[str]:
    """Stages that run whatever their markers say: all with ``--force``, ``--from``'s downstream set."""
    if force:
        return {s.name for s in spec.stages}
    return downstream(spec, from_stage) if from_stage is not None else set()


def _run_stage(
    run_folder: Path, stage: PlannedStage, inputs: dict[str, str], pipeline_run_id: str | None
) -> Marker:
    spec = stage.spec
    remove_marker(run_folder, spec.name)
    started_at = _now()
    write_json_atomically(
        started_path(run_folder, spec.name),
        {"stage": spec.name, "pid": os.getpid(), "started_at": started_at},
    )
    console.rule(f"[bold]stage {spec.name}[/bold] ({spec.kind})")
    # A copy: a stage that fills in a default must not change the config the marker records.
    cfg = copy.deepcopy(stage.cfg)
    with ResourceMonitor() as monitor, registry.scope(spec.kind, spec.name, pipeline_run_id):
        outcome = registry.run_stage(spec.kind, cfg)
    assert monitor.usage is not None
    seconds = monitor.usage.wall_s
    outputs = fingerprint_outputs(run_folder, stage.outputs)
    missing = [k for k, v in outputs.items() if v is None]
    if missing:
        raise StageError(
            f"stage {spec.name!r} finished but did not publish its declared output(s) "
            f"{', '.join(str(run_folder / m) for m in missing)}; fix `outputs` in the pipeline config."
        )
    marker = Marker(
        stage=spec.name,
        kind=spec.kind,
        config_hash=stage.config_hash,
        inputs=inputs,
        outputs={k: v for k, v in outputs.items() if v is not None},
        started_at=started_at,
        finished_at=_now(),
        seconds=round(seconds, 3),
        mlflow_run_id=outcome.mlflow_run_id,
        metrics=outcome.metrics,
        config=stage.hashed,
        resources=monitor.usage.as_dict(),
    )
    write_marker(run_folder, marker)
    return marker


def run_pipeline(
    cfg: dict[str, Any],
    force: bool = False,
    from_stage: str | None = None,
    overrides: Sequence[str] = (),
) -> PipelineRun:
    """Run every stage of ``cfg["pipeline"]`` whose success marker is missing or no longer valid.

    Args:
        cfg: the composed root config (``pipeline=<name>`` selected); only its ``pipeline`` node is read,
            the stages compose their own configs.
        force: redo every stage.
        from_stage: redo this stage and every stage downstream of it (valid markers elsewhere still skip).
        overrides: the user's command-line overrides; they apply to every stage, after the pipeline's and
            the stage's own (``pipeline.*`` overrides only shape the graph and are not passed on).

    Raises:
        ConfigError: no pipeline, a bad graph, an unknown ``--from`` stage, a stage config that does not
            compose or whose entry point does not exist. A failing stage's own error propagates after the
            summary table is printed; the stages before it keep their markers.
    """
    spec = parse_pipeline(cfg.get("pipeline"))
    user = [o for o in overrides if not _is_pipeline_override(o)]
    base, planned = plan(spec, user)
    redo = stages_to_redo(spec, force, from_stage)
    paths = RunPaths.from_cfg(base)
    date, run_folder = paths.date, paths.run
    settings = spec.report
    if settings is None:
        raise ConfigError(f"pipeline {spec.name!r}: `report` (split, k, ranking_metrics) is missing.")
    start = time.perf_counter()
    results: list[StageRow] = []
    digests: dict[str, str] = {}
    # The pipeline's MLflow run, created when the first stage runs: its stages' runs nest under it and the
    # report is logged into it (a rerun that skips everything creates none).
    pipeline_run: str | None = None
    locks.configure(base.get("locks"))
    with _run_lock(run_folder):
        for stale in remove_stale_staging(run_folder):
            console.print(f"removed staging folder of an interrupted run: {stale}", soft_wrap=True)
        for orphan in close_orphans(base, pipeline=spec.name):
            console.print(f"MLflow run {orphan} of an interrupted pipeline run marked FAILED")
        failed: BaseException | None = None
        for stage in planned:
            spec_ = stage.spec
            if failed is not None:
                results.append(
                    StageRow(spec_.name, spec_.kind, NOT_RUN, 0.0, "an earlier stage failed", None)
                )
                continue
            inputs = {n: digests[n] for n in spec_.needs}
            marker = read_marker(run_folder, spec_.name)
            if spec_.name in redo:
                reason: str | None = "--force" if force else f"--from {from_stage}"
            else:
                reason = _why_rerun(marker, stage, inputs, fingerprint_outputs(run_folder, stage.outputs))
            if reason is None and marker is not None:
                digests[spec_.name] = marker.digest()
                results.append(_result(stage, SKIPPED, 0.0, "up to date", marker))
                continue
            if started_path(run_folder, spec_.name).is_file():
                reason = f"{reason}; resuming an interrupted run"
            stage_start = time.perf_counter()
            if pipeline_run is None:
                pipeline_run = start_pipeline_run(base, spec.name)
            try:
                marker = _run_stage(run_folder, stage, inputs, pipeline_run)
            except BaseException as exc:
                failed = exc
                results.append(
                    StageRow(
                        spec_.name, spec_.kind, FAILED, time.perf_counter() - stage_start, str(reason), None
                    )
                )
                continue
            digests[spec_.name] = marker.digest()
            results.append(_result(stage, RAN, marker.seconds, str(reason), marker))
        seconds = time.perf_counter() - start
        print_summary(spec.name, date, results, seconds)
        if failed is not None:
            if pipeline_run is not None:
                end_pipeline_run(base, pipeline_run, failed=True)
            raise failed
        report_dir, pipeline_run = _report(
            run_folder, spec.name, date, results, settings, base, digests, pipeline_run
        )
        if pipeline_run is not None:
            end_pipeline_run(base, pipeline_run, failed=False)
    print_result(f"pipeline {spec.name}: run folder {run_folder}")
    return PipelineRun(spec.name, run_folder, results, time.perf_counter() - start, report_dir)


def _result(stage: PlannedStage, status: str, seconds: float, reason: str, marker: Marker) -> StageRow:
    return StageRow(
        stage.spec.name,
        stage.spec.kind,
        status,
        seconds,
        reason,
        stage.spec.metric,
        dict(marker.metrics),
        marker.mlflow_run_id,
        stage.outputs,
        str(stage.cfg["model"]["name"]) if stage.spec.kind in registry.MODEL_KINDS else None,
        dict(marker.resources) if status == RAN else {},
    )


def _report(
    run_folder: Path,
    name: str,
    date: str,
    results: list[StageRow],
    settings: ReportSettings,
    base: Mapping[str, Any],
    digests: Mapping[str, str],
    pipeline_run: str | None,
) -> tuple[Path, str | None]:
    """Write the report into the pipeline's run (created here when no stage ran but the report is stale)."""
    digest = hashlib.sha256("".join(f"{k}={v}\n" for k, v in sorted(digests.items())).encode()).hexdigest()
    folder = run_folder / "report"
    if report_is_current(run_folder, digest):
        print_result(f"report unchanged (no stage ran): {folder / 'report.html'}")
        return folder, pipeline_run
    if pipeline_run is None:
        pipeline_run = start_pipeline_run(base, name)
    # The report reads every stage's published outputs (plots): none may be replaced while it does.
    read = [run_folder / output for row in results for output in row.outputs]
    with locks.stage_locks([folder], read):
        folder = write_report(run_folder, name, date, results, settings, base, digest, pipeline_run)
    console.print(
        f"report: {folder / 'report.md'}, {folder / 'report.html'} (MLflow run {pipeline_run})",
        soft_wrap=True,
    )
    return folder, pipeline_run
