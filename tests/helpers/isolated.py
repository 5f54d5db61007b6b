"""Load a logged model the way a machine without this checkout would: a fresh interpreter in which the
project's packages cannot be imported (the editable install's finder and the checkout are taken off the
import system), so everything it runs comes from the code shipped inside the model.

It also checks the model's requirements: every third-party distribution the interpreter imported while
loading and predicting must be listed in the model's requirements.txt or be a dependency of one that is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# Imported only because they happen to be installed (optional imports of a dependency, each guarded by a
# try/except there), so an environment built from the requirements works without them and their own
# dependencies: mlflow.pyfunc imports pyspark and mlflow psutil when present, torch imports tqdm;
# torchmetrics imports transformers (then huggingface_hub and its HTTP stack) and matplotlib (pillow ...).
# setuptools (its distutils shim) is in every environment MLflow builds (python_env.yaml's build deps).
OPTIONAL_IMPORTS = ("pyspark", "psutil", "tqdm", "transformers", "matplotlib", "setuptools")

_SCRIPT = r"""
import importlib.util, json, re, sys
from importlib.metadata import packages_distributions, requires, PackageNotFoundError
repo, model_uri, tracking_uri, rows_json, optional_json = sys.argv[1:6]

# Take the checkout off the import system: the editable install's finders and any path inside the repo.
sys.meta_path = [f for f in sys.meta_path if not str(getattr(f, "__module__", "")).startswith("__editable__")]
sys.path_hooks = [h for h in sys.path_hooks if not getattr(h, "__module__", "").startswith("__editable__")]
def in_checkout(path):
    # The venv may live inside the checkout (.venv): its site-packages stay.
    return (path + "/").startswith(repo + "/") and not (path + "/").startswith(sys.prefix + "/")
sys.path = [p for p in sys.path if p and not in_checkout(p)]
sys.path_importer_cache.clear()
for package in ("recsys", "features", "models", "pipelines"):
    assert importlib.util.find_spec(package) is None, f"{package} is still importable from the checkout"

import mlflow
import pandas as pd
mlflow.set_tracking_uri(tracking_uri)
model = mlflow.pyfunc.load_model(model_uri)
rows = json.loads(rows_json)
frame = model.input_example if rows is None else pd.DataFrame(rows)
answer = model.predict(frame)
import recsys, models
local = mlflow.artifacts.download_artifacts(model_uri)
requirements = [re.split(r"[=<>!~ ;\[]", line.strip())[0] for line in open(local + "/requirements.txt")
                if line.strip() and not line.startswith(("#", "-"))]

def norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()

def closure(names):
    # The distributions and everything they require (extras left out), recursively.
    found, todo = set(), [norm(n) for n in names]
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        try:
            for line in requires(name) or []:
                if "extra ==" not in line:
                    todo.append(norm(re.split(r"[=<>!~ ;\[(]", line.strip())[0]))
        except PackageNotFoundError:
            pass
    return found

covered = closure(requirements) | closure(json.loads(optional_json))
providers = packages_distributions()
# The project's own modules came from the model's code folder (checked by the caller), whatever
# distribution the installed metadata says provides them.
ours = {"recsys", "features", "models", "pipelines"}
imported = {norm(d) for m in list(sys.modules) if m.split(".")[0] not in ours
            for d in providers.get(m.split(".")[0], [])}
print("RESULT " + json.dumps({
    "code_file": recsys.__file__,
    "models_file": models.__file__,
    "requirements": requirements,
    "uncovered": sorted(imported - covered),
    "answer": answer.to_dict(orient="list") if hasattr(answer, "to_dict") else list(answer),
}, default=str))
"""


@dataclass(frozen=True)
class IsolatedLoad:
    code_file: str
    requirements: list[str]
    uncovered: list[str]
    answer: dict[str, list[Any]]


def load_without_checkout(
    model_uri: str, tracking_uri: str, cwd: Path, rows: list[dict[str, Any]] | None = None
) -> IsolatedLoad:
    """Load ``model_uri`` in a fresh interpreter that cannot import the checkout and predict ``rows`` (the
    model's input example when None)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    optional = json.dumps(OPTIONAL_IMPORTS)
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, str(REPO), model_uri, tracking_uri, json.dumps(rows), optional],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    [line] = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    result = json.loads(line.removeprefix("RESULT "))
    return IsolatedLoad(result["code_file"], result["requirements"], result["uncovered"], result["answer"])


def assert_carries_its_code(loaded: IsolatedLoad) -> None:
    """The model ran from its own code copy, and every distribution it imported is in its requirements
    (or theirs), except the optional imports above."""
    assert "/code/recsys/" in loaded.code_file, loaded.code_file
    assert not loaded.code_file.startswith(str(REPO / "recsys")), loaded.code_file
    assert "recsys" not in loaded.requirements and "recsys-pipelines" not in loaded.requirements
    uncovered = loaded.uncovered
    assert uncovered == [], f"imported, not in the requirements {loaded.requirements}: {uncovered}"
