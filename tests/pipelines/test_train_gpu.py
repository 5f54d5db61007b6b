"""GPU and multi-node training configs: ``trainer=gpu`` trains the DLRM stage on CUDA (NCCL process group,
tables planned for GPU memory) and FAISS searches on the GPU with ``use_gpu``; on a machine without a GPU
those two tests are reported as skipped and the command must stop with a message saying what to change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import torch

from pipelines.markers import read_marker
from pipelines.runner import RAN, run_pipeline
from recsys.cli import EXIT_USER_ERROR, main
from recsys.config import compose, to_plain
from recsys.retrieval.index import ItemIndex
from recsys.settings import IndexConfig
from tests.pipelines.conftest import Reference, small_overrides
from tests.pipelines.test_train_ddp import DATE, TRAIN_STAGE

HAS_CUDA = torch.cuda.is_available()
FAISS_GPUS = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU on this machine")


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a GPU: test_dlrm_trains_on_gpu runs instead")
def test_trainer_gpu_without_a_gpu_stops_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["train", "model=dlrm", "trainer=gpu", f"paths.root={tmp_path}", "run.date=1998-04-23"])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err
    assert "CUDA GPU" in err and "sees 0" in err
    assert "trainer=cpu" in err and "docs/install.md#gpu" in err
    assert "This is a bug" not in err
    assert not (tmp_path / "1998-04-23" / "train").exists()


def test_multi_node_trainer_needs_a_torchrun_launch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = ["model=dlrm", "trainer=cpu", "trainer.num_nodes=2", f"paths.root={tmp_path}"]
    code = main(["train", *overrides])
    err = capsys.readouterr().err
    assert code == EXIT_USER_ERROR, err
    assert "trainer.num_nodes=2" in err and "torchrun" in err


def test_gpu_configs_compose() -> None:
    single = to_plain(compose(["trainer=gpu"]))["trainer"]
    multi = to_plain(compose(["trainer=gpu_multinode"]))["trainer"]
    assert (single["accelerator"], single["devices"], single["num_nodes"]) == ("gpu", 1, 1)
    assert (multi["accelerator"], multi["devices"], multi["num_nodes"]) == ("gpu", 8, 2)
    # The daily pipeline's documented GPU override composes into a GPU training stage.
    documented = "\"pipeline.stages.train_dlrm.overrides=['model=dlrm','trainer=gpu','trainer.devices=4']\""
    assert documented in (Path(__file__).parents[2] / "conf" / "pipeline" / "daily.yaml").read_text()
    documented = documented.strip('"')
    daily = to_plain(compose(["pipeline=daily", documented]))["pipeline"]["stages"]["train_dlrm"]
    stage = to_plain(compose(daily["overrides"]))["trainer"]
    assert (stage["accelerator"], stage["devices"]) == ("gpu", 4)


@needs_cuda
def test_dlrm_trains_on_gpu(reference_run: Reference) -> None:
    overrides = small_overrides(reference_run.root)
    cfg = to_plain(compose(["pipeline=demo", *overrides]))
    stages = cfg["pipeline"]["stages"]
    gpu_stage: dict[str, Any] = {
        **TRAIN_STAGE,
        "overrides": [o for o in TRAIN_STAGE["overrides"] if not o.startswith("trainer=")] + ["trainer=gpu"],
    }
    cfg["pipeline"]["stages"] = {
        "ingest": stages["ingest"],
        "features": stages["features"],
        "train_gpu": gpu_stage,
    }
    run = run_pipeline(cfg, overrides=overrides)
    assert {r.name: r.status for r in run.results}["train_gpu"] == RAN
    marker = read_marker(reference_run.root / DATE, "train_gpu")
    assert marker is not None
    assert 0.0 <= marker.metrics["test/auc"] <= 1.0


@pytest.mark.skipif(FAISS_GPUS == 0, reason="FAISS sees no GPU (faiss-cpu build or no device)")
def test_faiss_searches_on_the_gpu_like_on_the_cpu() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((2000, 32)).astype(np.float32)
    queries = rng.standard_normal((50, 32)).astype(np.float32)
    ids = np.arange(2000, dtype=np.int64)
    cpu = ItemIndex.build(vectors, ids, IndexConfig("flat", "Flat", use_gpu=False), model_version="v1")
    gpu = ItemIndex.build(vectors, ids, IndexConfig("flat", "Flat", use_gpu=True), model_version="v1")
    cpu_ids, cpu_scores = cpu.search(queries, 10)
    gpu_ids, gpu_scores = gpu.search(queries, 10)
    np.testing.assert_allclose(gpu_scores, cpu_scores, rtol=1e-4, atol=1e-4)
    assert (gpu_ids == cpu_ids).mean() > 0.99
