"""What the runner reads from a trainer's result, whatever the family's result type looks like."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pipelines.kinds import read_train_result


@dataclass
class _Published:
    run_id: str


@dataclass
class _SequentialShaped:
    """Like models.sequential.train.TrainResult: the run id of the published seed, a DataFrame summary."""

    published: _Published
    summary: Any = None


@dataclass
class _RecLoRAShaped:
    """Like models.reclora.train.RecLoRAResult: a run id and per-arm metric mappings."""

    run_id: str
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _DLRMShaped:
    run_id: str
    test_metrics: dict[str, float]
    metrics: dict[str, float]


@pytest.mark.parametrize(
    ("result", "expected"),
    [
        (
            _RecLoRAShaped("r1", {"reclora": {"test/auc": 0.7, "arm": "x"}, "shared": {"test/auc": 0.6}}),
            {"run_id": "r1", "metrics": {"reclora/test/auc": 0.7, "shared/test/auc": 0.6}},
        ),
        (_SequentialShaped(_Published("s1"), summary=[1, 2]), {"run_id": "s1", "metrics": {}}),
        (
            _DLRMShaped("d1", {"test/auc": 0.8, "flag": True}, {"ignored": 1.0}),
            {"run_id": "d1", "metrics": {"test/auc": 0.8}},
        ),
        (object(), {"run_id": None, "metrics": {}}),
    ],
)
def test_run_id_and_numeric_metrics_are_read_from_any_result_shape(
    result: object, expected: dict[str, Any]
) -> None:
    assert read_train_result(result) == expected
