"""The DLRM ranker as an MLflow pyfunc: CTR feature rows in, click probabilities out.

Shapes: B rows. The pyfunc holds an *unsharded* ``DLRMRanker`` on the CPU, rebuilt from three artifacts:

- ``config``: the ``model`` section (JSON, the ``conf/model/dlrm*.yaml`` layout read by
  ``mapping_to_config``);
- ``counts``: the manifest counts that size the tables (JSON);
- ``state_dict``: a plain ``torch.save`` of full tensors whose keys are those of ``DLRMRanker.state_dict()``.

The state dict comes from the trained ``DistributedModelParallel``: DMP's ``state_dict()`` already strips its
``_dmp_wrapped_module.`` / DDP ``module.`` prefixes, so its keys equal the plain ranker's; only the sharded
tables (``ShardedTensor`` / ``DTensor``) must be turned into full tensors. In a single-process run every shard
is local and is copied into place (:func:`unsharded_state_dict`). With several processes each rank holds only
its shards, and :func:`unsharded_state_dict` refuses partial tables rather than writing zeros; the full
tables come instead from the run's sharded (DCP) checkpoint, which holds every rank's shards: one process
reads the model tensors whole with DCP's own ``load`` (:func:`full_state_from_checkpoint`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.tensor import DTensor

from models.dlrm.batch import CTRBatch
from models.dlrm.checkpoint import MODEL_KEY
from models.dlrm.config import DLRMConfig
from models.dlrm.data import CTRBatchBuilder
from models.dlrm.module import DLRMLitModule
from models.dlrm.network import DLRMRanker, build_ranker
from recsys.config import as_dict, typed
from recsys.schema import LABEL
from recsys.tracking.models import ModelInfo, PythonModel, load_from_artifacts, log_pyfunc

SCORE = "score"
# Third-party modules the scorer imports when it loads and predicts (its requirements, pinned at logging):
# the TorchRec network, its FBGEMM kernels, and the Lightning module the checkpoint is read through.
SERVING_MODULES = ("torch", "torchrec", "fbgemm_gpu", "lightning", "scipy")
ARTIFACT_CONFIG = "config"
ARTIFACT_COUNTS = "counts"
ARTIFACT_STATE = "state_dict"
MODEL_NAME = "dlrm"
PYFUNC_SOURCE = Path("<pyfunc input>")
"""Named as the rows' source in the batch builder's error messages."""


def config_to_mapping(cfg: DLRMConfig) -> dict[str, Any]:
    """The ``conf/model/dlrm*.yaml`` layout of ``cfg`` (plain containers, for json);
    :func:`mapping_to_config` of it gives ``cfg``."""
    return as_dict(cfg)


def mapping_to_config(mapping: Mapping[str, Any]) -> DLRMConfig:
    """The typed config of a saved ``config`` artifact. Configs saved before the model group had a schema
    lack ``family`` (and the training-only keys, which have defaults); it is always ``dlrm`` here."""
    return typed(DLRMConfig, {"family": MODEL_NAME, **mapping}, "model")


def _full_tensor(name: str, value: torch.Tensor) -> torch.Tensor:
    """A full CPU copy of one state-dict entry (plain tensor, ``DTensor`` or local-only ``ShardedTensor``)."""
    if isinstance(value, DTensor):
        return value.full_tensor().detach().cpu().clone()
    if hasattr(value, "local_shards"):
        full = torch.zeros(value.size(), dtype=value.dtype)
        covered = 0
        for shard in value.local_shards():
            index = tuple(
                slice(offset, offset + length)
                for offset, length in zip(
                    shard.metadata.shard_offsets, shard.metadata.shard_sizes, strict=True
                )
            )
            full[index] = shard.tensor.detach().cpu()
            covered += shard.tensor.numel()
        if covered != full.numel():
            raise RuntimeError(
                f"{name}: this process holds {covered} of {full.numel()} values; gather the sharded tables "
                "(multi-process training) before exporting the ranker."
            )
        return full
    return value.detach().cpu().clone()


def unsharded_state_dict(module: DLRMLitModule) -> dict[str, torch.Tensor]:
    """Full-tensor state dict of the trained ranker, loadable by a plain CPU ``DLRMRanker``.

    Args:
        module: a trained module whose DMP holds every shard (single-process training).

    Returns:
        ``{DLRMRanker state-dict key: full CPU tensor}`` (tables ``[rows, D]``, MLP weights and biases).

    Raises:
        RuntimeError: the module has no model yet, or a table is only partly held by this process.
    """
    if module.model is None:
        raise RuntimeError("DLRMLitModule.configure_model() has not run: nothing to export.")
    return {name: _full_tensor(name, value) for name, value in module.model.state_dict().items()}


LIGHTNING_MODEL_PREFIX = "model."
"""``DLRMLitModule`` keeps its DMP as ``.model``: the prefix of the ranker's keys in the module's state."""


def full_state_from_checkpoint(folder: str | Path) -> dict[str, torch.Tensor]:
    """Full-tensor ranker state from a sharded checkpoint folder (``TorchRecStrategy.save_checkpoint``).

    Runs in one process, after training (no process group needed). DCP's metadata gives every model
    tensor's full size, and DCP reads every rank's shards of it straight into one CPU tensor; the optimizer
    state beside them (Adam's two moments, the Adagrad rows) is never read.

    Returns:
        ``{DLRMRanker state-dict key: full CPU tensor}``, as :func:`unsharded_state_dict` gives.

    Raises:
        RuntimeError: the folder holds no ranker weights.
    """
    reader = FileSystemReader(str(folder))
    # Keys as DCP flattened them: the module state's key under MODEL_KEY, the ranker's under the module's.
    prefix = f"{MODEL_KEY}.{LIGHTNING_MODEL_PREFIX}"
    state = {
        key: torch.empty(tuple(meta.size), dtype=meta.properties.dtype)
        for key, meta in reader.read_metadata().state_dict_metadata.items()
        if key.startswith(prefix) and isinstance(meta, TensorStorageMetadata)
    }
    if not state:
        raise RuntimeError(f"{folder}: no '{MODEL_KEY}' ranker weights in this checkpoint.")
    dcp_load(state, storage_reader=reader, no_dist=True)
    return {key[len(prefix) :]: value for key, value in state.items()}


def build_cpu_ranker(
    cfg: DLRMConfig, counts: Mapping[str, int], state: Mapping[str, torch.Tensor]
) -> DLRMRanker:
    """A non-distributed ``DLRMRanker`` on the CPU with ``state`` loaded (strictly: every key must match)."""
    ranker = build_ranker(cfg, counts, torch.device("cpu"))
    ranker.load_state_dict(dict(state), strict=True)
    return ranker.eval()


@dataclass(frozen=True)
class CPUScorer:
    """A whole ranker on the CPU (what the pyfunc serves) with the trained module's scoring contract
    (``cfg``, ``score(batch) -> [B]`` probabilities), for work after a multi-process run on one rank."""

    cfg: DLRMConfig
    ranker: DLRMRanker

    @classmethod
    def from_state(
        cls, cfg: DLRMConfig, counts: Mapping[str, int], state: Mapping[str, torch.Tensor]
    ) -> CPUScorer:
        return cls(cfg, build_cpu_ranker(cfg, counts, state))

    def score(self, batch: CTRBatch) -> torch.Tensor:
        with torch.no_grad():
            return torch.sigmoid(self.ranker(batch))


def rows_to_arrow(rows: pd.DataFrame, cfg: DLRMConfig) -> pa.Table:
    """The configured columns of ``rows`` as Arrow with the types the batch builder expects.

    Scalar ids become int64, id lists list<int64>, dense features float64 (NaN / None -> null); a missing
    ``label`` column becomes zeros (scores do not depend on it).

    Args:
        rows: ``B`` CTR rows with (at least) the columns the config names.
        cfg: model config naming the columns.

    Returns:
        Arrow table of ``B`` rows.
    """
    arrays: dict[str, pa.Array] = {}
    for name in cfg.sparse_features:
        if name not in rows.columns:
            continue
        column = pa.array(rows[name], from_pandas=True)
        is_list = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
        arrays[name] = column.cast(pa.list_(pa.int64()) if is_list else pa.int64())
    for name in cfg.dense_features:
        if name in rows.columns:
            arrays[name] = pa.array(rows[name], from_pandas=True).cast(pa.float64())
    labels = rows[LABEL] if LABEL in rows.columns else np.zeros(len(rows), dtype=np.float64)
    arrays[LABEL] = pa.array(labels, from_pandas=True).cast(pa.float64())
    return pa.table(arrays)


class DLRMScorer(PythonModel):
    """MLflow pyfunc: ``predict(DataFrame of B CTR rows) -> DataFrame({"score": [B] probabilities})``.

    Artifacts: ``config`` (model section JSON), ``counts`` (manifest counts JSON), ``state_dict``
    (``torch.save`` of the unsharded ranker). Rows go through ``CTRBatchBuilder`` once per call (no per-row
    Python), so the pyfunc scores exactly what offline evaluation scores.
    """

    def load_context(self, context: Any) -> None:
        config = json.loads(Path(context.artifacts[ARTIFACT_CONFIG]).read_text())
        self.counts: dict[str, int] = {
            str(k): int(v)
            for k, v in json.loads(Path(context.artifacts[ARTIFACT_COUNTS]).read_text()).items()
        }
        self.config = mapping_to_config(config)
        state = torch.load(context.artifacts[ARTIFACT_STATE], map_location="cpu", weights_only=True)
        self.scorer = CPUScorer.from_state(self.config, self.counts, state)
        self.builder = CTRBatchBuilder(self.config, PYFUNC_SOURCE)

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Score ``B`` rows.

        Args:
            context: unused (artifacts were read in ``load_context``).
            model_input: ``B`` CTR rows: ids as ints, id lists as lists, numeric statistics.
            params: unused.

        Returns:
            ``DataFrame`` with one float column ``score`` ``[B]`` in (0, 1).
        """
        batch = self.builder(rows_to_arrow(model_input, self.config))
        return pd.DataFrame({SCORE: self.scorer.score(batch).double().numpy()})


def save_artifacts(
    weights: DLRMLitModule | Mapping[str, torch.Tensor],
    cfg: DLRMConfig,
    counts: Mapping[str, int],
    folder: Path,
) -> dict[str, str]:
    """Write the three artifacts into ``folder`` and return ``{artifact name: path}``.

    ``weights``: a single-process module, or a full-tensor state (:func:`full_state_from_checkpoint`).
    """
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        ARTIFACT_CONFIG: folder / "model_config.json",
        ARTIFACT_COUNTS: folder / "counts.json",
        ARTIFACT_STATE: folder / "ranker_state_dict.pt",
    }
    paths[ARTIFACT_CONFIG].write_text(json.dumps(config_to_mapping(cfg), indent=2, sort_keys=True))
    paths[ARTIFACT_COUNTS].write_text(json.dumps({str(k): int(v) for k, v in counts.items()}, sort_keys=True))
    state = unsharded_state_dict(weights) if isinstance(weights, DLRMLitModule) else dict(weights)
    torch.save(state, paths[ARTIFACT_STATE])
    return {name: str(path) for name, path in paths.items()}


def log_dlrm(
    weights: DLRMLitModule | Mapping[str, torch.Tensor],
    cfg: DLRMConfig,
    counts: Mapping[str, int],
    example_rows: pd.DataFrame,
) -> ModelInfo:
    """Log the ranker pyfunc (artifacts, signature, input example) into the active MLflow run.

    Args:
        weights: trained single-process module (see :func:`unsharded_state_dict`), or the full-tensor state
            of a multi-process run (:func:`full_state_from_checkpoint`).
        cfg: its model config.
        counts: the manifest counts its tables were sized from.
        example_rows: a few CTR rows used as input example and to infer the signature.

    Returns:
        The ``ModelInfo`` of the logged model (``model_uri`` for ``mlflow.pyfunc.load_model``/registry).
    """
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = save_artifacts(weights, cfg, counts, Path(tmp))
        return log_pyfunc(MODEL_NAME, DLRMScorer, artifacts, example_rows, requires=SERVING_MODULES)


def load_published_ranker(folder: Path) -> CPUScorer:
    """The whole ranker ``recsys train`` published under ``train/<model>`` (the pyfunc's artifacts)."""
    from recsys.manifest import read_manifest

    files = read_manifest(folder).extra["artifacts"]
    artifacts = {name: str(folder / file) for name, file in files.items()}
    scorer = load_from_artifacts(DLRMScorer(), artifacts)
    assert isinstance(scorer, DLRMScorer)
    return scorer.scorer
