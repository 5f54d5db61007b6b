"""MLflow runs: tracking URI from ``conf/tracking``, params, the resolved config, metrics, artifacts, tags.

Every MLflow call of the package goes through this module (runs and logging), ``registry`` (model versions,
aliases) or ``models`` (pyfunc logging). A stage runs inside a :func:`stage_scope` set by the stage registry:
its runs are nested under the pipeline's run, tagged with the stage, ``run.date``, the git commit and the
data fingerprint, and their params hold only the config groups the stage reads (the whole config is logged
as the ``config.yaml`` artifact).
"""

from __future__ import annotations

import contextvars
import functools
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from recsys import locks
from recsys.tracking.keys import metric_key, mlflow_key

# MLflow's limits: 500 characters per param value, at most 100 params and 1000 metrics per batch call.
_PARAM_VALUE_LIMIT = 500
_PARAM_BATCH = 100
_METRIC_BATCH = 500
# Root config keys logged as params with any stage's groups: they change every stage's results.
ROOT_PARAMS = ("seed", "prefix")
GIT_TIMEOUT_S = 5

TAG_STAGE = "stage"
TAG_STAGE_NAME = "stage_name"
TAG_RUN_DATE = "run_date"
TAG_GIT_COMMIT = "git_commit"
TAG_DATA_FINGERPRINT = "data_fingerprint"
TAG_PIPELINE = "pipeline"
TAG_RUN_FOLDER = "run_folder"
# The run folder outputs a stage publishes (comma-separated): which runs a rerun of the stage may close.
TAG_OUTPUTS = "outputs"


@dataclass(frozen=True)
class StageScope:
    """Where the runs a stage opens belong.

    Attributes:
        stage: the stage's name (the pipeline's stage name, or the ``recsys`` verb).
        groups: config groups the stage reads: the params its runs log.
        parent_run_id: the pipeline's run, under which every run of the stage is nested (None: top level).
        tags: extra tags for every run of the stage.
    """

    stage: str
    groups: tuple[str, ...]
    parent_run_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)


_SCOPE: contextvars.ContextVar[StageScope | None] = contextvars.ContextVar("recsys_stage_scope", default=None)


@contextmanager
def stage_scope(scope: StageScope | None) -> Iterator[None]:
    """Runs opened inside the block belong to ``scope`` (``None``: no scope, the whole config as params)."""
    token = _SCOPE.set(scope)
    try:
        yield
    finally:
        _SCOPE.reset(token)


def current_scope() -> StageScope | None:
    return _SCOPE.get()


def sqlite_database(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (query string dropped); ``None`` for any other."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri.removeprefix("sqlite:///").partition("?")[0])


def configure(tracking: Mapping[str, Any]) -> str:
    """Point MLflow at the configured store, create the experiment if needed and make it the active one
    (a bare ``mlflow.start_run()`` would otherwise use experiment 0, whose artifacts land in ./mlruns);
    returns its id.

    A new SQLite store is created and migrated by MLflow on first use; parallel stages on a fresh root
    would each start that migration, so the first use happens under a file lock beside the database.
    """
    uri = str(tracking["tracking_uri"])
    from recsys.tracking import registry

    database = sqlite_database(uri)
    # tracking.lock_dir (conf/tracking); a config built without it locks promotions beside a SQLite store.
    lock_dir = tracking.get("lock_dir") or (None if database is None else database.parent)
    registry.set_lock_dir(None if lock_dir is None else Path(str(lock_dir)))
    if database is None:
        mlflow.set_tracking_uri(uri)
        return _activate_experiment(tracking)

    database.parent.mkdir(parents=True, exist_ok=True)
    with locks.exclusive(
        database.with_name(f"{database.name}.lock"),
        f"the MLflow store {database} (being created)",
        "Another command is creating or upgrading it; retry, or raise locks.wait_s.",
    ):
        mlflow.set_tracking_uri(uri)
        return _activate_experiment(tracking)


def _activate_experiment(tracking: Mapping[str, Any]) -> str:
    name = str(tracking["experiment"])
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = str(experiment.experiment_id)
    else:
        artifact_root = tracking.get("artifact_root")
        location = Path(str(artifact_root)).joinpath(name).as_uri() if artifact_root else None
        try:
            experiment_id = str(mlflow.create_experiment(name, artifact_location=location))
        except MlflowException:
            # Another process created it between the lookup and the creation (a tracking server).
            again = mlflow.get_experiment_by_name(name)
            if again is None:
                raise
            experiment_id = str(again.experiment_id)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}``; lists become their string form."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:_PARAM_VALUE_LIMIT]
    return out


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout this package runs from, or ``None`` (installed wheel, no git)."""
    folder = Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


def data_fingerprint(cfg: Mapping[str, Any]) -> str | None:
    """The source fingerprint of the snapshot's data: the published split's, else the ingested
    interactions'; ``None`` before ingest."""
    from recsys.manifest import read_manifest
    from recsys.paths import RunPaths

    paths = RunPaths.from_cfg(cfg)
    for folder in (paths.features / "split", paths.ingest / "interactions"):
        if (folder / "manifest.json").is_file():
            return read_manifest(folder).source_fingerprint
    return None


def provenance_tags(cfg: Mapping[str, Any]) -> dict[str, str]:
    """``run_date``, ``run_folder``, ``git_commit`` and ``data_fingerprint`` (the last two when known)."""
    from recsys.paths import RunPaths

    tags = {TAG_RUN_DATE: str(cfg["run"]["date"]), TAG_RUN_FOLDER: str(RunPaths.from_cfg(cfg).run)}
    commit, fingerprint = git_commit(), data_fingerprint(cfg)
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    if fingerprint:
        tags[TAG_DATA_FINGERPRINT] = fingerprint
    return tags


def stage_params(cfg: Mapping[str, Any], groups: tuple[str, ...] | None) -> dict[str, str]:
    """Flattened params of the config groups a stage reads (every group when ``groups`` is None)."""
    if groups is None:
        return flatten(cfg)
    chosen = {g: cfg[g] for g in groups if cfg.get(g) is not None}
    chosen.update({k: cfg[k] for k in ROOT_PARAMS if k in cfg})
    return flatten(chosen)


def log_params(params: Mapping[str, Any]) -> None:
    items = sorted((str(k), str(v)[:_PARAM_VALUE_LIMIT]) for k, v in params.items())
    for start in range(0, len(items), _PARAM_BATCH):
        mlflow.log_params(dict(items[start : start + _PARAM_BATCH]))


@contextmanager
def tracked_run(
    cfg: Mapping[str, Any], run_name: str, tags: Mapping[str, str] | None = None
) -> Iterator[Run]:
    """A stage's MLflow run: params of the groups it reads, ``config.yaml``, provenance tags, nested under
    the pipeline's run when the stage runs in one (:func:`stage_scope`).

    An exception inside the block ends the run with status FAILED and propagates.
    """
    experiment_id = configure(cfg["tracking"])
    scope = current_scope()
    all_tags = provenance_tags(cfg)
    if scope is not None:
        # `stage_name`: the pipeline's name of the stage (e.g. `evaluate_ease`), or the `recsys` verb;
        # `stage` defaults to it, but a family's own finer tag (e.g. `train-seeds`) wins.
        all_tags.update({TAG_STAGE: scope.stage, TAG_STAGE_NAME: scope.stage, **scope.tags})
    all_tags.update(dict(tags or {}))
    parent = None if scope is None else scope.parent_run_id
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=run_name, tags=all_tags, parent_run_id=parent
    ) as run:
        log_params(stage_params(cfg, None if scope is None else scope.groups))
        mlflow.log_text(yaml.safe_dump(dict(cfg), sort_keys=True), "config.yaml")
        yield run


@contextmanager
def nested_run(run_name: str, params: Mapping[str, Any] | None = None) -> Iterator[Run]:
    """A child run of the active run (e.g. one arm or seed of an ablation)."""
    with mlflow.start_run(run_name=run_name, nested=True) as run:
        if params:
            log_params(params)
        yield run


@contextmanager
def resume_run(tracking: Mapping[str, Any], run_id: str, nested: bool = False) -> Iterator[Run]:
    """Reopen a finished run to add to it (e.g. the index stage's pyfunc in the evaluate run)."""
    configure(tracking)
    with mlflow.start_run(run_id=run_id, nested=nested) as run:
        yield run


TAG_LEARNING_FAILED = "learning_failed"


def flag_failed(tracking: Mapping[str, Any], run_id: str, reason: str) -> None:
    """Mark a finished run FAILED with the reason as its ``learning_failed`` tag: the UI and any search for
    failed runs then show a model that trained without error but did not learn."""
    configure(tracking)
    client = MlflowClient()
    client.set_tag(run_id, TAG_LEARNING_FAILED, reason)
    client.set_terminated(run_id, status="FAILED")


def active_run_id() -> str | None:
    run = mlflow.active_run()
    return None if run is None else str(run.info.run_id)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log into the active run (keys made MLflow-safe; batched under MLflow's per-call limit)."""
    items = sorted((mlflow_key(str(k)), float(v)) for k, v in metrics.items())
    for start in range(0, len(items), _METRIC_BATCH):
        mlflow.log_metrics(dict(items[start : start + _METRIC_BATCH]), step=step)


def log_metric_table(table: pd.DataFrame, split: str, step: int | None = None) -> dict[str, float]:
    """Log a tidy ``metric, k, bucket, value`` table; returns what was logged (NaNs are skipped).

    ``step``: give the training's last step when the same keys were logged per epoch during training
    (``val/ndcg_at_10``), so that the final evaluation is the value MLflow reports as the latest.
    """
    columns = [table[c].tolist() for c in ("metric", "k", "bucket", "value")]
    logged = {
        metric_key(split, str(metric), int(k), str(bucket)): float(value)
        for metric, k, bucket, value in zip(*columns, strict=True)
        if pd.notna(value)
    }
    log_metrics(logged, step=step)
    return logged


def set_tags(tags: Mapping[str, Any]) -> None:
    mlflow.set_tags({str(k): str(v) for k, v in tags.items()})


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_artifact(path: Path, folder: str | None = None) -> None:
    mlflow.log_artifact(str(path), folder)


def log_artifacts(folder: Path, destination: str | None = None) -> None:
    mlflow.log_artifacts(str(folder), destination)


def run_metrics(tracking: Mapping[str, Any], run_id: str) -> dict[str, float]:
    """The latest value of every metric a run logged."""
    client = MlflowClient(tracking_uri=str(tracking["tracking_uri"]))
    return {str(k): float(v) for k, v in client.get_run(run_id).data.metrics.items()}


def lightning_logger(cfg: Mapping[str, Any], run_id: str) -> Any:
    """Lightning's ``MLFlowLogger`` writing into the open run ``run_id`` (training curves)."""
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(
        experiment_name=str(cfg["tracking"]["experiment"]),
        tracking_uri=str(cfg["tracking"]["tracking_uri"]),
        run_id=run_id,
    )


def close_orphans(
    cfg: Mapping[str, Any], outputs: str | None = None, pipeline: str | None = None
) -> list[str]:
    """Mark FAILED the runs of this run folder that a killed process left ``RUNNING``: those of the stage
    that publishes ``outputs`` (its ``outputs`` tag), or the pipeline run of ``pipeline``; returns their ids.

    Called by a command that holds those outputs' writer locks (or the pipeline's run lock): no live process
    can own such a run, so every one found is an orphan.
    """
    uri = str(cfg["tracking"]["tracking_uri"])
    database = sqlite_database(uri)
    if database is not None and not database.is_file():
        return []
    from recsys.paths import RunPaths

    folder = str(RunPaths.from_cfg(cfg).run)
    if pipeline is not None:
        which = f"tags.{TAG_STAGE} = '{TAG_PIPELINE}' and tags.{TAG_PIPELINE} = '{pipeline}'"
    else:
        which = f"tags.{TAG_OUTPUTS} = '{outputs}'"
    if any("'" in value for value in (folder, outputs or "", pipeline or "")):
        return []  # not expressible in MLflow's filter syntax; such runs stay as they are
    experiment_id = configure(cfg["tracking"])
    client = MlflowClient()
    runs = client.search_runs(
        [experiment_id],
        f"{which} and tags.{TAG_RUN_FOLDER} = '{folder}' and attributes.status = 'RUNNING'",
        max_results=1000,
    )
    for run in runs:
        client.set_tag(run.info.run_id, "killed", "its process died; a rerun of the stage marked it FAILED")
        client.set_terminated(run.info.run_id, status="FAILED")
    return [run.info.run_id for run in runs]


def start_pipeline_run(cfg: Mapping[str, Any], pipeline: str) -> str:
    """Create the pipeline's run (left open: its stages nest under it); returns its id."""
    experiment_id = configure(cfg["tracking"])
    tags = {**provenance_tags(cfg), TAG_STAGE: TAG_PIPELINE, TAG_PIPELINE: pipeline}
    client = MlflowClient(tracking_uri=str(cfg["tracking"]["tracking_uri"]))
    run = client.create_run(experiment_id, tags=tags, run_name=f"pipeline-{pipeline}")
    return str(run.info.run_id)


def end_pipeline_run(cfg: Mapping[str, Any], run_id: str, failed: bool) -> None:
    client = MlflowClient(tracking_uri=str(cfg["tracking"]["tracking_uri"]))
    client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")
