"""Logging a pyfunc model into the active run: the one place the package calls ``mlflow.pyfunc``.

A family's pyfunc class subclasses :data:`PythonModel` and reads its artifacts in ``load_context``. Logging
first loads a copy from the artifacts on disk and predicts the input example with it (the signature is
inferred from that prediction, so a model that cannot serve its own example is never logged); a fresh,
unloaded instance is what MLflow pickles: the weights travel as artifacts only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc.model import PythonModel, PythonModelContext

__all__ = ["ModelInfo", "PythonModel", "bad_request", "load_from_artifacts", "log_pyfunc"]


def bad_request(message: str) -> Exception:
    """The error a pyfunc raises for a malformed request: MLflow's scoring server answers it with HTTP 400
    and the message (any other exception is a 500)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def load_from_artifacts(model: PythonModel, artifacts: Mapping[str, str]) -> PythonModel:
    """``model`` with ``load_context`` run on ``artifacts`` (name -> local path), as MLflow would."""
    model.load_context(PythonModelContext(artifacts=dict(artifacts), model_config={}))  # type: ignore[no-untyped-call]
    return model


def log_pyfunc(
    name: str,
    model_factory: Callable[[], PythonModel],
    artifacts: Mapping[str, str],
    example: pd.DataFrame,
    params: Mapping[str, Any] | None = None,
    pip_requirements: Sequence[str] | None = None,
) -> ModelInfo:
    """Log ``model_factory()`` with ``artifacts`` as the pyfunc ``name`` of the active run.

    Args:
        name: the model's artifact path in the run.
        model_factory: builds an unloaded instance of the pyfunc class.
        artifacts: artifact name -> local path (copied into the run).
        example: input example; the signature is inferred from it and a loaded copy's prediction.
        params: inference params with their defaults (part of the signature), e.g. ``{"k": 100}``.
        pip_requirements: the model's requirements when MLflow's inference would get them wrong.
    """
    loaded = load_from_artifacts(model_factory(), artifacts)
    signature = infer_signature(
        example, loaded.predict(None, example), params=None if params is None else dict(params)
    )
    info: ModelInfo = mlflow.pyfunc.log_model(
        name=name,
        python_model=model_factory(),
        artifacts=dict(artifacts),
        signature=signature,
        input_example=example,
        pip_requirements=None if pip_requirements is None else list(pip_requirements),
    )
    return info
