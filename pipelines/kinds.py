"""Stage kinds: each maps a stage onto the entry point the ``recsys`` command uses for the same work.

``ingest``   -> :func:`features.ingest.run_ingest` (read + validate, Spark in-process) and
``features`` -> :func:`features.build.run_features`: the two halves of :func:`features.run.run`;
``evaluate`` -> :func:`recsys.jobs.run_evaluate` (fit a baseline, full-ranking metrics, MLflow);
``train``    -> the family's trainer in :data:`recsys.cli.TRAINERS` (``model.family``), on
``trainer.devices`` local processes;
``index``    -> :func:`recsys.jobs.run_index` (FAISS index, candidates Parquet, retriever registration).

Entry points are imported only when their stage runs, so a rerun that skips everything imports neither
Spark nor torch. A trainer whose module does not exist yet fails with a message naming the stage and the
missing entry point, before any stage of the run starts (:func:`check_entry_point`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recsys.console import print_table
from recsys.errors import ConfigError
from recsys.paths import stage_dir

KIND_INGEST, KIND_FEATURES = "ingest", "features"
KIND_EVALUATE, KIND_TRAIN, KIND_INDEX = "evaluate", "train", "index"


@dataclass
class StageOutcome:
    """What a kind hands back to the runner: the key numbers and the MLflow run it logged to."""

    metrics: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str | None = None


def entry_point(stage: str, spec: str) -> Callable[..., Any]:
    """Import ``module:function``; a missing module or function is a :class:`ConfigError` naming both."""
    module_name, _, function_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"stage {stage!r}: entry point {spec} is not available ({exc}); remove the stage from the "
            f"pipeline (`~pipeline.stages.{stage}`) until that model family is installed."
        ) from exc
    function = getattr(module, function_name, None)
    if not callable(function):
        raise ConfigError(
            f"stage {stage!r}: module {module_name} has no function {function_name!r} ({spec})."
        )
    return function  # type: ignore[no-any-return]


def check_entry_point(stage: str, kind: str, cfg: Mapping[str, Any]) -> None:
    """Fail before anything runs when a stage's kind is unknown or its trainer module is missing.

    Uses ``find_spec`` (imports parent packages only), so checking does not load torch or Spark.
    """
    if kind not in KINDS:
        raise ConfigError(f"stage {stage!r}: unknown kind {kind!r}; kinds: {', '.join(KINDS)}.")
    if kind != KIND_TRAIN:
        return
    spec = trainer_spec(stage, cfg)
    module_name = spec.partition(":")[0]
    try:
        found = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:
        found = None
    if found is None:
        raise ConfigError(
            f"stage {stage!r}: entry point {spec} is not available (no module {module_name}); remove the "
            f"stage from the pipeline (`~pipeline.stages.{stage}`) until that model family is installed."
        )


def trainer_spec(stage: str, cfg: Mapping[str, Any]) -> str:
    from recsys.cli import TRAINERS

    family = cfg["model"].get("family")
    if family not in TRAINERS:
        raise ConfigError(
            f"stage {stage!r}: model={cfg['model'].get('name')} (family {family!r}) is not trainable; "
            f"trainable families: {', '.join(sorted(TRAINERS))}."
        )
    return TRAINERS[str(family)]


def _spark(cfg: Mapping[str, Any]) -> Any:
    from features.session import build_session

    return build_session(cfg["spark"])


def _print_outputs(title: str, manifests: Mapping[str, Any], folder: Path) -> None:
    rows = [(name, f"{m.row_count:,}", str(folder / name)) for name, m in manifests.items()]
    print_table(title, ["output", "rows", "path"], rows)


def run_ingest(stage: str, cfg: dict[str, Any]) -> StageOutcome:
    """Read + validate the configured data and publish ``ingest/`` (first half of ``recsys features``)."""
    from features.ingest import run_ingest as ingest
    from features.run import INGEST_STAGE

    folder = stage_dir(Path(cfg["paths"]["root"]).resolve(), str(cfg["run"]["date"]), INGEST_STAGE)
    result = ingest(_spark(cfg), cfg, folder)
    _print_outputs(f"{stage}: ingest", result.manifests, result.stage_dir)
    metrics = {f"{r.table}.rows_read": float(r.rows_read) for r in result.tables}
    metrics.update({f"{r.table}.rows_bad": float(r.rows_bad) for r in result.tables})
    return StageOutcome(metrics)


def run_features(stage: str, cfg: dict[str, Any]) -> StageOutcome:
    """Every features output from the published ``ingest/`` (second half of ``recsys features``).

    The Spark session is stopped afterwards when this process started it, so training gets the JVM's
    memory back; a session that already ran before (tests share one) is left running.
    """
    from pyspark.sql import SparkSession

    from features.build import STAGE as FEATURES_STAGE
    from features.build import run_features as build
    from features.run import INGEST_STAGE

    root, date = Path(cfg["paths"]["root"]).resolve(), str(cfg["run"]["date"])
    existing = SparkSession.getActiveSession()
    try:
        result = build(
            _spark(cfg), cfg, stage_dir(root, date, INGEST_STAGE), stage_dir(root, date, FEATURES_STAGE)
        )
    finally:
        session = SparkSession.getActiveSession()
        if existing is None and session is not None:
            session.stop()
    _print_outputs(f"{stage}: features", result.manifests, result.stage_dir)
    split = result.manifests["split"]
    metrics = {f"split.{k}": float(v) for k, v in split.counts.items()}
    metrics["split.rows"] = float(split.row_count)
    return StageOutcome(metrics)


def run_evaluate(stage: str, cfg: dict[str, Any]) -> StageOutcome:
    from recsys.evaluation import metric_key
    from recsys.jobs import run_evaluate as evaluate

    result, run_id = evaluate(cfg)
    metrics: dict[str, float] = {}
    for split, evaluation in result.splits.items():
        table = evaluation.metrics
        overall = table[table["bucket"] == "all"]
        for metric, k, value in zip(overall["metric"], overall["k"], overall["value"], strict=True):
            metrics[metric_key(split, str(metric), int(k))] = float(value)
    return StageOutcome(metrics, run_id)


def run_index(stage: str, cfg: dict[str, Any]) -> StageOutcome:
    from recsys.jobs import run_index as index

    result = index(cfg)
    metrics = {
        "candidate_users": float(result.candidates),
        "registered_version": float(result.registration.version),
        "promoted": float(result.registration.decision.promote),
    }
    return StageOutcome(metrics)


def run_train(stage: str, cfg: dict[str, Any]) -> StageOutcome:
    """The family's trainer, in this process or, with ``trainer.devices > 1``, in that many processes."""
    spec = trainer_spec(stage, cfg)
    entry_point(stage, spec)
    devices = int(cfg["trainer"]["devices"])
    if devices > 1:
        from models.dlrm.launch import launch_local

        # Lightning would otherwise start the extra processes by re-running this command line, i.e. the
        # whole pipeline; under the launcher it joins the process group the launcher set up.
        per_rank = launch_local(train_worker, devices, stage, spec, cfg)
        result = per_rank[0]
    else:
        result = train_worker(stage, spec, cfg)
    metrics, run_id = dict(result["metrics"]), result["run_id"]
    if run_id is not None and not set(metrics) - {"train.world_size"}:
        metrics.update(_mlflow_metrics(cfg, run_id))
    return StageOutcome(metrics, run_id)


def train_worker(stage: str, spec: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """One training process; returns only picklable values (:func:`read_train_result`)."""
    return read_train_result(entry_point(stage, spec)(cfg))


def read_train_result(result: object) -> dict[str, Any]:
    """The run id and the metrics of whatever a family's trainer returned.

    Read: ``run_id`` (or ``published.run_id``); metrics from ``test_metrics`` / ``metrics`` / ``summary``,
    the first that is a (nested) mapping of numbers; ``trainer.world_size`` when there is a Lightning
    trainer. When no metrics are found this way, the runner reads them from the MLflow run.
    """
    run_id = getattr(result, "run_id", None) or getattr(getattr(result, "published", None), "run_id", None)
    metrics: dict[str, float] = {}
    for attribute in ("test_metrics", "metrics", "summary"):
        value = getattr(result, attribute, None)
        if isinstance(value, Mapping) and value:
            metrics = _numbers(value)
            break
    trainer = getattr(result, "trainer", None)
    if trainer is not None:
        # Proof of the process count the trainer really ran with (not just what was asked for).
        metrics["train.world_size"] = float(trainer.world_size)
    return {"run_id": None if run_id is None else str(run_id), "metrics": metrics}


def _numbers(value: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"a": {"b": 1}}`` -> ``{"a/b": 1.0}``; entries that are not numbers are left out."""
    out: dict[str, float] = {}
    for key, item in value.items():
        if isinstance(item, Mapping):
            out.update(_numbers(item, f"{prefix}{key}/"))
        elif isinstance(item, int | float) and not isinstance(item, bool):
            out[f"{prefix}{key}"] = float(item)
    return out


def _mlflow_metrics(cfg: Mapping[str, Any], run_id: str) -> dict[str, float]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=str(cfg["tracking"]["tracking_uri"]))
    return {str(k): float(v) for k, v in client.get_run(run_id).data.metrics.items()}


KINDS: dict[str, Callable[[str, dict[str, Any]], StageOutcome]] = {
    KIND_INGEST: run_ingest,
    KIND_FEATURES: run_features,
    KIND_EVALUATE: run_evaluate,
    KIND_TRAIN: run_train,
    KIND_INDEX: run_index,
}
