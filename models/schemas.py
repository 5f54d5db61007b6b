"""Schemas of the ``model`` and ``bench`` config groups for the neural model families (cheap to import: the
config modules import no torch, Lightning or TorchRec).

Call :func:`register_model_schemas` before ``recsys.config.compose`` so that the composed ``model`` option
(by its ``family``) and ``bench`` option (by its ``name``) are checked against their dataclasses.
"""

from __future__ import annotations

from typing import Any

from models.dlrm.config import DLRMBenchConfig, DLRMConfig
from models.reclora.config import RecLoRABenchSettings, RecLoRAConfig
from models.sequential.config import SequentialBenchSettings, SequentialConfig
from recsys.config import register_schema
from recsys.settings import (
    FeaturesBenchSettings,
    RetrievalBenchSettings,
    ScalingBenchSettings,
    ServingBenchSettings,
)

MODEL_SCHEMAS: dict[str, type[Any]] = {
    "dlrm": DLRMConfig,
    "sequential": SequentialConfig,
    "reclora": RecLoRAConfig,
}
"""``model.family`` -> schema of the model option (``baseline`` models are registered elsewhere)."""

BENCH_SCHEMAS: dict[str, type[Any]] = {
    "features": FeaturesBenchSettings,
    "retrieval": RetrievalBenchSettings,
    "dlrm": DLRMBenchConfig,
    "sequential": SequentialBenchSettings,
    "reclora": RecLoRABenchSettings,
    "serving": ServingBenchSettings,
    "scaling": ScalingBenchSettings,
}
"""``bench.name`` (``conf/bench/<name>.yaml``) -> schema of the bench option."""


def register_model_schemas() -> None:
    """Register every schema above with ``recsys.config.register_schema`` (idempotent)."""
    for family, schema in MODEL_SCHEMAS.items():
        register_schema("model", schema, when=("family", family))
    for name, schema in BENCH_SCHEMAS.items():
        register_schema("bench", schema, when=("name", name))
