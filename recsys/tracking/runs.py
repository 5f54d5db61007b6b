"""MLflow runs: tracking URI from ``conf/tracking``, flattened params, the resolved config, metrics, plots.

Metric keys follow ``{split}/{metric}_at_{k}`` (MLflow rejects ``@``; Lightning's logger would silently
drop it), bucket variants append ``/bucket_<name>``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import yaml
from mlflow.entities import Run

from recsys.evaluation import metric_key

# MLflow's limits: 500 characters per param value, at most 100 params per batch call.
_PARAM_VALUE_LIMIT = 500
_PARAM_BATCH = 100


def configure(tracking: Mapping[str, Any]) -> str:
    """Point MLflow at the configured store, create the experiment if needed and make it the active one
    (a bare ``mlflow.start_run()`` would otherwise use experiment 0, whose artifacts land in ./mlruns);
    returns its id."""
    uri = str(tracking["tracking_uri"])
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    name = str(tracking["experiment"])
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = str(experiment.experiment_id)
    else:
        artifact_root = tracking.get("artifact_root")
        location = Path(str(artifact_root)).joinpath(name).as_uri() if artifact_root else None
        experiment_id = str(mlflow.create_experiment(name, artifact_location=location))
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


@contextmanager
def tracked_run(
    cfg: Mapping[str, Any], run_name: str, tags: Mapping[str, str] | None = None
) -> Iterator[Run]:
    """An MLflow run with the flattened config as params and ``config.yaml`` as an artifact.

    An exception inside the block ends the run with status FAILED and propagates.
    """
    experiment_id = configure(cfg["tracking"])
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=dict(tags or {})) as run:
        params = flatten(cfg)
        items = sorted(params.items())
        for start in range(0, len(items), _PARAM_BATCH):
            mlflow.log_params(dict(items[start : start + _PARAM_BATCH]))
        mlflow.log_text(yaml.safe_dump(dict(cfg), sort_keys=True), "config.yaml")
        yield run


def log_metric_table(table: pd.DataFrame, split: str) -> dict[str, float]:
    """Log a tidy ``metric, k, bucket, value`` table; returns what was logged (NaNs are skipped)."""
    columns = [table[c].tolist() for c in ("metric", "k", "bucket", "value")]
    logged = {
        metric_key(split, str(metric), int(k), str(bucket)): float(value)
        for metric, k, bucket, value in zip(*columns, strict=True)
        if pd.notna(value)
    }
    mlflow.log_metrics(logged)
    return logged
