"""The ``evaluate`` stage of the baselines and the ``index`` stage of every retriever."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from recsys.config import typed
from recsys.console import console, print_result, print_table, step
from recsys.manifest import read_manifest
from recsys.offline import (
    EvaluateResult,
    fit_and_evaluate,
    load_interactions,
    print_metrics,
    users_with_interactions,
    write_evaluation,
)
from recsys.paths import RunPaths
from recsys.retrieval.candidates import generate_candidates
from recsys.retrieval.index import IndexConfig, ItemIndex
from recsys.schema import FIRST_INDEX
from recsys.stage import Retriever, StageResult
from recsys.tracking.keys import metric_key
from recsys.tracking.plots import metric_at_k_curves, popularity_vs_coverage
from recsys.tracking.registry import register_and_gate
from recsys.tracking.runs import (
    log_artifact,
    log_artifacts,
    log_metric_table,
    resume_run,
    set_tags,
    tracked_run,
)

PLOT_K = 10


def evaluate_stage(cfg: Mapping[str, Any]) -> StageResult:
    """Fit the configured baseline on train, evaluate valid/test, log everything to one MLflow run, publish
    ``evaluate/<model>``."""
    result, run_id, out = run_evaluate(cfg)
    metrics: dict[str, float] = {}
    for split, evaluation in result.splits.items():
        table = evaluation.metrics
        overall = table[table["bucket"] == "all"]
        for metric, k, value in zip(overall["metric"], overall["k"], overall["value"], strict=True):
            metrics[metric_key(split, str(metric), int(k))] = float(value)
    return StageResult(metrics, run_id, (out,))


def run_evaluate(cfg: Mapping[str, Any]) -> tuple[EvaluateResult, str, Path]:
    paths = RunPaths.from_cfg(cfg)
    features = paths.features
    read_manifest(features / "split")
    model = str(cfg["model"]["name"])
    with tracked_run(cfg, run_name=f"evaluate-{model}", tags={"model": model, "stage": "evaluate"}) as run:
        result = fit_and_evaluate(cfg, features)
        run_id = run.info.run_id
        set_tags({"eval_set": result.data.eval_set})
        for split, evaluation in result.splits.items():
            log_metric_table(evaluation.metrics, split)
        with tempfile.TemporaryDirectory() as tmp:
            for split, evaluation in result.splits.items():
                path = metric_at_k_curves(
                    evaluation.metrics, f"{model} ({split})", Path(tmp) / f"{split}_metrics_at_k.png"
                )
                log_artifact(path, "plots")
            if "test" in result.splits:
                tables = {model: result.splits["test"].metrics}
                path = popularity_vs_coverage(tables, PLOT_K, Path(tmp) / "popularity_vs_coverage.png")
                log_artifact(path, "plots")
        out = paths.evaluate(model)
        with step(f"publish metrics and recommendations to {out}"):
            write_evaluation(result, out, f"{model}:{run_id}", run_id)
        log_artifacts(out / "metrics", "metrics")
    print_metrics(result)
    console.print(f"MLflow run {run_id} in {cfg['tracking']['tracking_uri']}", soft_wrap=True)
    print_result(f"evaluation outputs: {out}")
    return result, run_id, out


def index_stage(cfg: Mapping[str, Any], retriever: Retriever) -> StageResult:
    """FAISS index over the retriever's published item vectors, candidates for every user, and the retriever
    pyfunc registered (challenger; champion only through the promotion gate)."""
    model = str(cfg["model"]["name"])
    paths = RunPaths.from_cfg(cfg)
    published = retriever.published(paths, model)
    vectors = published.item_vectors
    data = load_interactions(paths.features)
    item_idx = np.arange(FIRST_INDEX, data.num_items, dtype=np.int64)
    index_cfg = typed(IndexConfig, cfg["index"], "index")
    index_dir = paths.index(model, str(cfg["index"]["name"]))
    with step(f"build FAISS {index_cfg.factory} over {len(item_idx):,} items"):
        index = ItemIndex.build(
            np.ascontiguousarray(vectors[item_idx]), item_idx, index_cfg, published.model_version
        )
        index.save(index_dir)
    everything = (data.matrices["train"] + data.matrices["valid"] + data.matrices["test"]).tocsr()
    users = users_with_interactions(everything)
    if published.user_vectors is not None:
        # Sequence models: the model's own user encoder over each full, ordered history (row = user_idx).
        user_vectors = np.ascontiguousarray(published.user_vectors[users], dtype=np.float32)
    else:
        user_vectors = np.asarray(everything[users] @ vectors, dtype=np.float32)
    k = int(cfg["evaluation"]["candidates_k"])
    candidates_dir = paths.candidates(model)
    with step(f"candidates: top {k} unseen items for {len(users):,} users"):
        written = generate_candidates(
            index,
            user_vectors,
            users,
            everything[users],
            k,
            candidates_dir,
            model=model,
            model_version=published.model_version,
        )
    run_id = published.run_id
    with resume_run(cfg["tracking"], run_id):
        # Tags, not params: the evaluate run already logged the default index config, and an index may be
        # rebuilt with another type later (params are immutable).
        set_tags({"retriever.index": str(cfg["index"]["name"]), "retriever.factory": index_cfg.factory})
        example = [str(x) for x in data.item_ids[item_idx[:3]]]
        model_info = retriever.log_pyfunc(
            published, index_dir, data.item_ids.astype(str), data.snapshot_popularity(), k, example
        )
        registration = register_and_gate(
            model_info.model_uri,
            f"{cfg['prefix']}-retriever",
            run_id,
            str(cfg["evaluation"]["promotion_metric"]),
            published.eval_set,
        )
    print_table(
        "index",
        ["what", "value"],
        [
            ("index", str(index_dir)),
            ("candidates", f"{written:,} users -> {candidates_dir}"),
            ("registered", f"{registration.name} v{registration.version}"),
            ("champion?", f"{registration.decision.promote} ({registration.decision.reason})"),
        ],
    )
    metrics = {
        "candidate_users": float(written),
        "registered_version": float(registration.version),
        "promoted": float(registration.decision.promote),
    }
    return StageResult(metrics, run_id, (index_dir, candidates_dir))
