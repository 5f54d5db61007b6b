"""`recsys bench reclora` on a tiny backbone: same prompts for both engines, ratio = personalized / shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.reclora.bench import PERSONALIZED, SHARED, run_reclora_bench
from models.reclora.train import ArmResult, _summary
from recsys.config import compose, to_plain
from tests.models.test_reclora_network import save_tiny_bert


def test_bench_reports_ms_per_sample_and_ratio(tmp_path: Path) -> None:
    tiny = save_tiny_bert(tmp_path / "bert")
    overrides = [
        "bench=reclora",
        f"bench.backbone_path={tiny}",
        "bench.batch_size=4",
        "bench.seq_length=16",
        "bench.num_batches=2",
        "bench.warmup_batches=1",
        "bench.repeats=2",
    ]
    result = run_reclora_bench(to_plain(compose(overrides)))
    engines = {t["engine"]: t for t in result["timings"]}
    assert set(engines) == {SHARED, PERSONALIZED}
    ms = result["ms_per_sample"]
    assert ms[SHARED] > 0 and ms[PERSONALIZED] > 0
    assert result["ratio"] == pytest.approx(ms[PERSONALIZED] / ms[SHARED])
    assert engines[PERSONALIZED]["ratio"] == result["ratio"] and engines[SHARED]["ratio"] == 1.0
    assert engines[SHARED]["samples_per_s"] == pytest.approx(8 / engines[SHARED]["seconds"])
    assert (
        len(result["seconds_per_repeat"][SHARED]) == 2 and len(result["cpu_seconds_per_repeat"][SHARED]) == 2
    )
    assert result["cpu_ratio"] > 0


def test_summary_gives_mean_and_std_over_seeds() -> None:
    results = [
        ArmResult(1, "shared", True, {"test/auc": 0.6, "test/logloss": 0.7}, 10.0),
        ArmResult(2, "shared", True, {"test/auc": 0.7, "test/logloss": 0.6}, 20.0),
        ArmResult(1, "conventional", None, {"test/auc": 0.8, "test/logloss": 0.5}, 5.0),
    ]
    summary = _summary(results)
    assert set(summary) == {"shared+retriever", "conventional"}
    assert summary["shared+retriever"]["test/auc_mean"] == pytest.approx(0.65)
    assert summary["shared+retriever"]["test/auc_std"] == pytest.approx(0.05)
    assert summary["shared+retriever"]["seconds_mean"] == pytest.approx(15.0)
    assert summary["conventional"]["test/logloss_std"] == 0.0
