"""Logging a pyfunc model into the active run: the one place the package calls ``mlflow.pyfunc``.

A family's pyfunc class subclasses :data:`PythonModel` and reads its artifacts in ``load_context``. Logging
first loads a copy from the artifacts on disk and predicts the input example with it (the signature is
inferred from that prediction, so a model that cannot serve its own example is never logged); a fresh,
unloaded instance is what MLflow pickles: the weights travel as artifacts only.

A logged model carries its code: the project's import packages are copied into the model (MLflow
``code_paths``) and put on ``sys.path`` when it loads, so it loads where this package is not installed (a
container, another machine, ``mlflow models serve --env-manager virtualenv``). Its requirements are the
distributions of the modules the model's code imports, pinned to the versions it was logged with; MLflow's
inference is not used, because it would list this package itself (not on the index under that name) and
prune everything this package depends on.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.metadata import packages_distributions, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.models import infer_signature
from mlflow.models.model import ModelInfo
from mlflow.pyfunc.model import PythonModel, PythonModelContext

__all__ = ["ModelInfo", "PythonModel", "bad_request", "load_from_artifacts", "log_pyfunc", "requirements_of"]

# The import packages a model's pickled class and its imports live in (the layout of this project).
PROJECT_PACKAGES = ("recsys", "features", "models", "pipelines")
# What loading any pyfunc of this project imports: MLflow and cloudpickle to unpickle it, the frames of the
# request and answer, the config helpers every model reads its saved settings with, and the console the
# package's modules report through.
BASE_MODULES = ("mlflow", "cloudpickle", "numpy", "pandas", "pyarrow", "omegaconf", "hydra", "yaml", "rich")
_CODE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


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


def requirements_of(modules: Iterable[str]) -> list[str]:
    """``dist==version`` of the installed distributions providing ``modules`` (top-level import names) and
    :data:`BASE_MODULES`, sorted. Local version labels are dropped (``torch==2.13.0``, not ``2.13.0+cpu``):
    an index has no local builds, and the same version of the public build is what an environment gets.

    Raises:
        ValueError: a module no installed distribution provides (a typo, or a module of this project).
    """
    providers = packages_distributions()
    pins = set()
    for module in (*BASE_MODULES, *modules):
        if module not in providers:
            raise ValueError(f"no installed distribution provides the module {module!r}")
        for distribution in providers[module]:
            pins.add(f"{distribution}=={version(distribution).split('+')[0]}")
    return sorted(pins)


def _stage_code(folder: Path) -> list[str]:
    """Copies of the project's import packages under ``folder`` (sources only), for ``code_paths``."""
    paths = []
    for package in PROJECT_PACKAGES:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise RuntimeError(f"cannot locate the package {package!r} to ship with the model")
        target = folder / package
        shutil.copytree(Path(spec.origin).parent, target, ignore=_CODE_IGNORE)
        paths.append(str(target))
    return paths


def log_pyfunc(
    name: str,
    model_factory: Callable[[], PythonModel],
    artifacts: Mapping[str, str],
    example: pd.DataFrame,
    requires: Sequence[str],
    params: Mapping[str, Any] | None = None,
) -> ModelInfo:
    """Log ``model_factory()`` with ``artifacts`` and the project's code as the pyfunc ``name`` of the
    active run.

    Args:
        name: the model's artifact path in the run.
        model_factory: builds an unloaded instance of the pyfunc class.
        artifacts: artifact name -> local path (copied into the run).
        example: input example; the signature is inferred from it and a loaded copy's prediction.
        requires: top-level modules the model's code imports when it loads and predicts, beyond
            :data:`BASE_MODULES` (e.g. ``("torch", "faiss")``); they become its pinned requirements.
        params: inference params with their defaults (part of the signature), e.g. ``{"k": 100}``.
    """
    loaded = load_from_artifacts(model_factory(), artifacts)
    signature = infer_signature(
        example, loaded.predict(None, example), params=None if params is None else dict(params)
    )
    with tempfile.TemporaryDirectory(prefix="recsys-code-") as folder:
        info: ModelInfo = mlflow.pyfunc.log_model(
            name=name,
            python_model=model_factory(),
            artifacts=dict(artifacts),
            signature=signature,
            input_example=example,
            code_paths=_stage_code(Path(folder)),
            pip_requirements=requirements_of(requires),
        )
    return info
