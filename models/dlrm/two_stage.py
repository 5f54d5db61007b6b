"""The ``rerank`` stage: a published ranker re-orders its retriever's top-K lists on the test split, and the
stage logs, for that retriever, the retrieval-only metrics, the re-ranked metrics and the upper bound (the
candidates' recall).

Two kinds of ranker are evaluated the same way (``recsys.evaluation.evaluate_ranking`` over every test user,
the users whose test items were not retrieved included):

- a candidate ranker (``model.task: candidates``) re-ranks the lists of its own retriever
  (``model.candidates.retriever``), built exactly as its training lists were (``models.dlrm.candidates``);
- a CTR ranker (``task: ctr``) re-ranks ``evaluation.rerank_retriever``'s lists with point-in-time CTR rows
  (``models.dlrm.rerank``), the protocol that shows why a ranker must be trained on the candidate task.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.dlrm.candidates import build_candidate_set, labelled_events
from models.dlrm.config import DLRMConfig
from models.dlrm.rerank import (
    Ranker,
    TwoStageResult,
    evaluate_orders,
    publish_two_stage,
    scatter_scores,
    score_rows,
    two_stage_evaluation,
    two_stage_metrics,
)
from recsys.console import print_table, step
from recsys.manifest import read_manifest
from recsys.offline import load_interactions
from recsys.paths import RERANK, RunPaths
from recsys.scoring import reranked_retriever
from recsys.stage import StageResult
from recsys.tracking.registry import Registration, register_and_gate

TEST_SPLIT = "test"


def candidate_two_stage(cfg: Mapping[str, Any], ranker: Ranker) -> TwoStageResult:
    """The test lists of the ranker's retriever, re-ranked by the ranker's scores, both orders evaluated."""
    model_cfg: DLRMConfig = ranker.cfg
    paths = RunPaths.from_cfg(cfg)
    events = labelled_events(paths.features, float(cfg["features"]["ctr"]["rating_threshold"]))
    lists = build_candidate_set(cfg, model_cfg, events, TEST_SPLIT)
    with step(f"score {lists.rows.num_rows:,} test candidate rows with {model_cfg.name}"):
        flat = score_rows(ranker, lists.rows, paths.features, model_cfg.batch_size)
    data = load_interactions(paths.features)
    users = lists.queries.users
    return evaluate_orders(
        cfg,
        data,
        users,
        lists.queries.times,
        lists.retrieved.items,
        scatter_scores(lists.valid, flat),
        data.matrices[TEST_SPLIT][users],
    )


RECOMMENDER_METRIC = "two_stage/reranked_ndcg_at_10"
"""The promotion gate of ``<prefix>-recommender``: the served list's quality, measured by this stage."""
SERVED_K = 10
"""Items a served request gets by default (``params={"k": ...}`` asks for more, up to candidates.k)."""


def _register_recommender(
    cfg: Mapping[str, Any], ranker_folder: Path, model_cfg: DLRMConfig, run_id: str
) -> Registration:
    """Log the served two-stage recommender into this stage's run and register it behind the gate."""
    from models.dlrm.recommender import log_recommender

    paths = RunPaths.from_cfg(cfg)
    with step("log and register the two-stage recommender pyfunc"):
        assert model_cfg.candidates is not None
        info = log_recommender(cfg, ranker_folder, model_cfg, min(SERVED_K, model_cfg.candidates.k))
    split = read_manifest(paths.features / "split")
    eval_set = f"{split.source_fingerprint[:16]}-{split.config_hash[:16]}"
    name = f"{cfg['prefix']}-recommender"
    return register_and_gate(info.model_uri, name, run_id, RECOMMENDER_METRIC, eval_set)


def rerank_stage(cfg: Mapping[str, Any]) -> StageResult:
    """The ``rerank`` stage: logs the two-stage metrics to its own MLflow run and publishes both orders'
    metric tables (column ``order``: ``retrieval`` / ``reranked``) under ``rerank/<model>-<retriever>``."""
    from models.dlrm.pyfunc import load_published_ranker
    from recsys.tracking.runs import log_metrics, tracked_run

    paths = RunPaths.from_cfg(cfg)
    model = str(cfg["model"]["name"])
    ranker_folder = paths.train(model)
    ranker = load_published_ranker(ranker_folder)
    retriever = reranked_retriever(cfg["model"], cfg["evaluation"])
    ranker_run = str(read_manifest(ranker_folder).extra.get("run_id", ""))
    tags = {"model": model, "stage": RERANK, "retriever": retriever, "ranker_run_id": ranker_run}
    with tracked_run(cfg, run_name=f"{RERANK}-{model}-{retriever}", tags=tags) as run:
        if ranker.cfg.task == "candidates":
            result = candidate_two_stage(cfg, ranker)
        else:
            k = cfg["evaluation"]["candidates_k"]
            with step(f"re-rank {retriever}'s top {k} candidates with {model}"):
                result = two_stage_evaluation(cfg, ranker, retriever)
        metrics = two_stage_metrics(result)
        log_metrics(metrics)
        registered = (
            _register_recommender(cfg, ranker_folder, ranker.cfg, run.info.run_id)
            if ranker.cfg.task == "candidates"
            else None
        )
        out = publish_two_stage(paths.rerank(model, retriever), result, model, retriever, run.info.run_id)
    gain = (
        result.reranked_ndcg_at_10 / result.retrieval_ndcg_at_10
        if result.retrieval_ndcg_at_10
        else float("nan")
    )
    rows = [(k, f"{v:.4f}") for k, v in metrics.items()] + [("re-ranked / retrieval NDCG@10", f"{gain:.3f}x")]
    if registered is not None:
        rows += [
            ("registered", f"{registered.name} v{registered.version}"),
            ("champion?", f"{registered.decision.promote} ({registered.decision.reason})"),
        ]
    print_table(
        f"{model}: re-ranked {retriever} candidates (test, {len(result.users):,} users)",
        ["metric", "value"],
        rows,
    )
    return StageResult(metrics, run.info.run_id, (out,))
