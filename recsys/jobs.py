"""The functions behind ``recsys evaluate`` and ``recsys index`` (the pipeline stages call the same ones)."""

from __future__ import annotations

import importlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from recsys.console import console, print_table, step
from recsys.errors import InputError
from recsys.manifest import read_manifest
from recsys.offline import (
    EvaluateResult,
    evaluate_dir,
    features_dir,
    fit_and_evaluate,
    load_interactions,
    print_metrics,
    write_evaluation,
)
from recsys.paths import stage_dir
from recsys.retrieval.candidates import generate_candidates
from recsys.retrieval.index import IndexConfig, ItemIndex
from recsys.schema import FIRST_INDEX
from recsys.tracking.plots import metric_at_k_curves, popularity_vs_coverage
from recsys.tracking.registry import Registration, register_and_gate
from recsys.tracking.retriever import log_retriever
from recsys.tracking.runs import configure, log_metric_table, tracked_run

PLOT_K = 10


def run_evaluate(cfg: Mapping[str, Any]) -> tuple[EvaluateResult, str]:
    """Fit the configured model on train, evaluate valid/test, log everything to one MLflow run."""
    features = features_dir(cfg)
    read_manifest(features / "split")
    model = str(cfg["model"]["name"])
    with tracked_run(cfg, run_name=f"evaluate-{model}", tags={"model": model, "stage": "evaluate"}) as run:
        result = fit_and_evaluate(cfg, features)
        run_id = run.info.run_id
        mlflow.set_tag("eval_set", result.data.eval_set)
        for split, evaluation in result.splits.items():
            log_metric_table(evaluation.metrics, split)
        with tempfile.TemporaryDirectory() as tmp:
            for split, evaluation in result.splits.items():
                path = metric_at_k_curves(
                    evaluation.metrics, f"{model} ({split})", Path(tmp) / f"{split}_metrics_at_k.png"
                )
                mlflow.log_artifact(str(path), "plots")
            if "test" in result.splits:
                tables = {model: result.splits["test"].metrics}
                path = popularity_vs_coverage(tables, PLOT_K, Path(tmp) / "popularity_vs_coverage.png")
                mlflow.log_artifact(str(path), "plots")
        out = evaluate_dir(cfg)
        with step(f"publish metrics and recommendations to {out}"):
            write_evaluation(result, out, f"{model}:{run_id}", run_id)
        mlflow.log_artifacts(str(out / "metrics"), "metrics")
    print_metrics(result)
    console.print(f"MLflow run {run_id} in {cfg['tracking']['tracking_uri']}", soft_wrap=True)
    console.print(f"evaluation outputs: {out}", soft_wrap=True)
    return result, run_id


@dataclass
class IndexResult:
    index_dir: Path
    candidates_dir: Path
    candidates: int
    registration: Registration


def run_index(cfg: Mapping[str, Any]) -> IndexResult:
    """FAISS index over the evaluated model's item vectors, candidates for every user, and the retriever
    pyfunc registered (challenger, champion only through the promotion gate)."""
    model = str(cfg["model"]["name"])
    evaluated = evaluate_dir(cfg)
    info = read_manifest(evaluated)
    vectors_path = evaluated / "item_vectors.npy"
    if not vectors_path.is_file():
        raise InputError(
            f"{evaluated}: model={model} has no item vectors to index "
            f"(vector models: puresvd, sasrec, molar); run `recsys evaluate model=puresvd` or "
            f"`recsys train model=sasrec` first."
        )
    vectors = np.load(vectors_path)
    data = load_interactions(features_dir(cfg))
    item_idx = np.arange(FIRST_INDEX, data.num_items, dtype=np.int64)
    index_cfg = IndexConfig.from_mapping(cfg["index"])
    version = str(info.extra["model_version"])
    root, date = Path(cfg["paths"]["root"]).resolve(), str(cfg["run"]["date"])
    index_dir = stage_dir(root, date, "index") / f"{model}-{cfg['index']['name']}"
    with step(f"build FAISS {index_cfg.factory} over {len(item_idx):,} items"):
        index = ItemIndex.build(np.ascontiguousarray(vectors[item_idx]), item_idx, index_cfg, version)
        index.save(index_dir)
    everything = (data.matrices["train"] + data.matrices["valid"] + data.matrices["test"]).tocsr()
    users = np.flatnonzero(np.diff(everything.indptr) > 0)
    if "user_vectors" in info.extra:
        # Sequence models: the model's own user encoder over each full, ordered history (row = user_idx).
        stored = np.load(evaluated / str(info.extra["user_vectors"]))
        user_vectors = np.ascontiguousarray(stored[users], dtype=np.float32)
    else:
        user_vectors = np.asarray(everything[users] @ vectors, dtype=np.float32)
    k = int(cfg["evaluation"]["candidates_k"])
    candidates_dir = stage_dir(root, date, "candidates") / model
    with step(f"candidates: top {k} unseen items for {len(users):,} users"):
        written = generate_candidates(
            index,
            user_vectors,
            users,
            everything[users],
            k,
            candidates_dir,
            model=model,
            model_version=version,
        )
    configure(cfg["tracking"])
    run_id = str(info.extra["run_id"])
    with mlflow.start_run(run_id=run_id), tempfile.TemporaryDirectory() as tmp:
        # Tags, not params: the evaluate run already logged the default index config, and an index may be
        # rebuilt with another type later (params are immutable).
        mlflow.set_tags(
            {"retriever.index": str(cfg["index"]["name"]), "retriever.factory": index_cfg.factory}
        )
        example = [str(x) for x in data.item_ids[item_idx[:3]]]
        if "retriever_logger" in info.extra:
            # A model family with its own query encoder logs its retriever pyfunc ("module:function").
            module_name, function_name = str(info.extra["retriever_logger"]).split(":")
            log_family = getattr(importlib.import_module(module_name), function_name)
            model_info = log_family(evaluated, index_dir, data.item_ids.astype(str), k, example)
        else:
            model_info = log_retriever(index_dir, vectors, data.item_ids.astype(str), k, example, Path(tmp))
        registration = register_and_gate(
            model_info.model_uri,
            f"{cfg['prefix']}-retriever",
            run_id,
            str(cfg["evaluation"]["promotion_metric"]),
            str(info.extra["eval_set"]),
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
    return IndexResult(index_dir, candidates_dir, written, registration)
