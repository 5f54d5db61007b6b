"""Model Registry: versions, ``challenger`` / ``champion`` aliases and the promotion gate.

The decision is a pure function of two metric sets and their evaluation-set identities
(:func:`decide_promotion`); applying it (:func:`register_and_gate`) is the only part that talks to MLflow.
A challenger never replaces the champion on numbers from a different evaluation set.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from recsys import locks

CHAMPION = "champion"
CHALLENGER = "challenger"
EVAL_SET_TAG = "eval_set"
# Registered-model tag: "public" (clients call it) or "internal" (the pipeline's own building block).
AUDIENCE_TAG = "audience"


# Where promotion locks live (``tracking.lock_dir``, set by ``runs.configure``); None: no lock.
_lock_dir: Path | None = None


def set_lock_dir(folder: Path | None) -> None:
    global _lock_dir
    _lock_dir = folder


@contextmanager
def _promotion_lock(name: str) -> Iterator[None]:
    """Promotions of ``name`` one at a time: each compares with the champion the previous one left."""
    if _lock_dir is None:
        yield
        return
    with locks.exclusive(
        _lock_dir / f".registry-{name}.lock",
        f"the promotion of registered model {name!r}",
        "Another command is registering a version of it; retry, or raise locks.wait_s.",
    ):
        yield


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide_promotion(
    metric: str,
    challenger: Mapping[str, float],
    challenger_eval_set: str,
    champion: Mapping[str, float] | None,
    champion_eval_set: str | None,
    min_improvement: float = 0.0,
    champion_failed: bool = False,
) -> Decision:
    """Promote when there is no champion, or the champion's run failed, or the challenger beats it by more
    than ``min_improvement`` on ``metric`` measured on the same evaluation set (higher is better).

    ``champion_failed``: the champion's run is ``FAILED``: its process was killed after registering and
    before its stage finished (a rerun closed the orphan), so a finished run's model replaces it."""
    if metric not in challenger:
        return Decision(False, f"challenger has no metric {metric!r}")
    if champion is None:
        return Decision(True, "no champion yet")
    if champion_failed:
        return Decision(True, "the champion's run failed before its stage finished")
    if champion_eval_set != challenger_eval_set:
        return Decision(
            False,
            f"evaluation sets differ (champion {champion_eval_set}, challenger {challenger_eval_set}): "
            "not comparable",
        )
    if metric not in champion:
        return Decision(True, f"champion has no metric {metric!r}")
    new, old = challenger[metric], champion[metric]
    if new > old + min_improvement:
        return Decision(True, f"{metric}: {new:.6f} > champion {old:.6f}")
    return Decision(False, f"{metric}: {new:.6f} does not beat champion {old:.6f}")


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    decision: Decision


@dataclass(frozen=True)
class _Champion:
    metrics: dict[str, float]
    eval_set: str | None
    failed: bool


def _champion(client: MlflowClient, name: str) -> _Champion | None:
    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None
    if version.run_id is None:
        return None
    run = client.get_run(version.run_id)
    return _Champion(dict(run.data.metrics), run.data.tags.get(EVAL_SET_TAG), run.info.status == "FAILED")


def register_and_gate(
    model_uri: str, name: str, run_id: str, metric: str, eval_set: str, internal: str | None = None
) -> Registration:
    """Register ``model_uri`` as a new version of ``name``, alias it ``challenger``, and move ``champion``
    to it only when :func:`decide_promotion` says so. The run must carry the metrics and the eval-set tag.

    ``internal``: why clients should not call this model (its inputs are the pipeline's encoded features,
    not what a client has); recorded as the registered model's description and ``audience`` tag, so the
    registry says which models are the public ones."""
    client = MlflowClient()
    client.set_tag(run_id, EVAL_SET_TAG, eval_set)
    run_metrics = dict(client.get_run(run_id).data.metrics)
    with _promotion_lock(name):
        return _register(client, model_uri, name, run_metrics, metric, eval_set, internal)


def _register(
    client: MlflowClient,
    model_uri: str,
    name: str,
    run_metrics: dict[str, float],
    metric: str,
    eval_set: str,
    internal: str | None,
) -> Registration:
    current = _champion(client, name)
    version = mlflow.register_model(model_uri, name, tags={EVAL_SET_TAG: eval_set})
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    decision = decide_promotion(
        metric,
        run_metrics,
        eval_set,
        None if current is None else current.metrics,
        None if current is None else current.eval_set,
        champion_failed=current is not None and current.failed,
    )
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version.version)
    client.set_model_version_tag(name, version.version, "promotion", decision.reason)
    client.set_registered_model_tag(name, AUDIENCE_TAG, "public" if internal is None else "internal")
    if internal is not None:
        client.update_registered_model(name, description=f"Internal model: {internal}")
    return Registration(name, str(version.version), decision)
