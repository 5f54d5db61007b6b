"""``recsys train model=sasrec|molar``: Lightning fits the sequence model with early stopping on validation
NDCG@10 (full ranking), restores the best weights, tests, logs to MLflow, publishes ``train/<model>``
(metrics, recommendations, ``item_vectors.npy``, ``user_vectors.npy``, the model) and registers
``<prefix>-sequential`` behind the promotion gate on test NDCG@10. The family's retriever
(:class:`SequentialRetrieverSource`) gives ``recsys index`` those vectors and logs the retriever pyfunc.

``model.seeds=[1,2,3]`` trains once per seed (one MLflow run each) and prints / logs the mean and standard
deviation of the test metrics; the seed with the best *validation* NDCG@10 is the one published and
registered (never chosen on test).
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from lightning.pytorch.callbacks import EarlyStopping

from models.common.trainer import build_trainer
from models.sequential.config import SequentialConfig
from models.sequential.data import SequenceData, SequenceDataModule, keep_evaluated_users, load_sequences
from models.sequential.evaluate import RankingEvaluator, few_interactions_bucket
from models.sequential.floor import learning_floor
from models.sequential.module import VALIDATION_METRIC, BestWeights, SequentialLitModule
from models.sequential.network import MolarNet, SASRec, build_network, encode_users
from models.sequential.pyfunc import (
    MODEL_DIR,
    SequenceScorerSource,
    log_retriever_for_index,
    log_sequential,
    save_model,
)
from recsys.config import typed
from recsys.console import console, print_table, step
from recsys.errors import LearningFailedError
from recsys.manifest import publish_atomically, read_manifest, write_manifest
from recsys.offline import (
    USER_VECTORS,
    EvaluateResult,
    InteractionData,
    SplitEvaluation,
    load_interactions,
    read_published_vectors,
    write_evaluation,
)
from recsys.paths import RunPaths
from recsys.retrieval.index import IndexConfig, ItemIndex
from recsys.schema import FIRST_INDEX
from recsys.settings import TrainerConfig
from recsys.stage import ModelFamily, PublishedVectors, StageResult
from recsys.tracking.registry import Registration, register_and_gate
from recsys.tracking.runs import (
    flag_failed,
    lightning_logger,
    log_metric_table,
    log_metrics,
    log_text,
    resume_run,
    run_metrics,
    set_tags,
    tracked_run,
)

PROMOTION_METRIC = "test/ndcg_at_10"
SUMMARY_K = 10
# Lightning warns that num_workers=0 is slow: the batches are slices of in-memory tensors, workers only
# add process start-up and copies.
warnings.filterwarnings("ignore", ".*does not have many workers.*")


class SequenceScorerSlot:
    """The ``HistoryScorer`` slot of an ``EvaluateResult`` for a sequence model.

    ``write_evaluation`` only needs the model's name; a sequence model cannot score an unordered history
    matrix, so ``fit`` / ``score`` say so instead of guessing an order.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def fit(self, train: sp.csr_matrix) -> None:
        raise TypeError(f"{self.name} is trained by `recsys train`, not fitted on a matrix")

    def score(self, histories: sp.csr_matrix) -> np.ndarray:
        raise TypeError(f"{self.name} scores ordered sequences (user_vectors.npy), not history matrices")


@dataclass
class SeedResult:
    seed: int
    run_id: str
    network: SASRec | MolarNet
    evaluations: dict[str, SplitEvaluation]
    best_val: float
    best_epoch: int
    epochs: int
    seconds: float

    def metric(self, split: str, metric: str, k: int, bucket: str = "all") -> float:
        table = self.evaluations[split].metrics
        row = table[(table["metric"] == metric) & (table["k"] == k) & (table["bucket"] == bucket)]
        return float(row["value"].iloc[0]) if len(row) else float("nan")


@dataclass
class TrainResult:
    model: str
    seeds: list[SeedResult]
    published: SeedResult
    summary: pd.DataFrame
    registration: Registration


def set_threads(num_threads: int | None) -> int:
    """``torch.set_num_threads`` from config, or every CPU this process may use (``None``)."""
    threads = num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    return threads


def content_matrix(
    cfg: Mapping[str, Any], model_cfg: SequentialConfig
) -> tuple[np.ndarray, np.ndarray] | None:
    """Molar: the configured modalities' content vectors side by side ``[N, sum C]`` and ``has_content``."""
    if model_cfg.molar is None:
        return None
    from models.common.content import load_content_vectors

    loaded = [load_content_vectors(cfg, modality) for modality in model_cfg.molar.modalities]
    vectors = np.concatenate([c.vectors for c in loaded], axis=1).astype(np.float32)
    has_content = np.logical_or.reduce([c.has_content for c in loaded])
    return vectors, has_content


def train_seed(
    cfg: Mapping[str, Any],
    model_cfg: SequentialConfig,
    seed: int,
    data: SequenceData,
    interactions: InteractionData,
    content: tuple[np.ndarray, np.ndarray] | None,
) -> SeedResult:
    """One MLflow run: fit with early stopping, restore the best epoch, evaluate valid + test, log."""
    pl.seed_everything(seed, workers=True)
    network = build_network(model_cfg, data.num_items, content)
    evaluator = RankingEvaluator(interactions, cfg["evaluation"], model_cfg.few_interactions_max)
    module = SequentialLitModule(model_cfg, network, interactions.item_popularity, evaluator)
    datamodule = SequenceDataModule(
        data, model_cfg.batch_size, model_cfg.eval_batch_size, seed, model_cfg.bucket_by_length
    )
    trainer_cfg = typed(TrainerConfig, cfg["trainer"], "trainer")
    best = BestWeights()
    run_cfg = {**cfg, "seed": seed}
    tags = {"model": model_cfg.name, "stage": "train", "family": "sequential"}
    with tracked_run(run_cfg, run_name=f"train-{model_cfg.name}-seed{seed}", tags=tags) as run:
        logger = lightning_logger(cfg, run.info.run_id)
        trainer = build_trainer(
            trainer_cfg,
            devices=1,
            num_nodes=1,
            max_epochs=model_cfg.max_epochs,
            logger=logger,
            # Early stopping cannot end the run before min_steps optimizer steps (Lightning ignores its
            # stop signal until then): patience alone ended runs on the initial plateau.
            min_steps=model_cfg.min_steps,
            callbacks=[
                EarlyStopping(VALIDATION_METRIC, mode="max", patience=model_cfg.patience),
                best,
            ],
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            enable_model_summary=False,
        )
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule)
        seconds = time.perf_counter() - start
        trainer.test(module, datamodule=datamodule, verbose=False)
        evaluations = {"valid": _evaluate_valid(network, data, evaluator, model_cfg), **module.evaluations}
        for split, evaluation in evaluations.items():
            # At the last step: Lightning logged val/* per epoch; the restored best epoch's values win.
            log_metric_table(evaluation.metrics, split, step=trainer.global_step)
        log_metrics(
            {
                "best/val_ndcg_at_10": best.best_score,
                "best/epoch": best.best_epoch,
                "train/epochs": trainer.current_epoch,
                "train/seconds": seconds,
            }
        )
        set_tags({"eval_set": interactions.eval_set})
    return SeedResult(
        seed,
        run.info.run_id,
        network,
        evaluations,
        best.best_score,
        best.best_epoch,
        trainer.current_epoch,
        seconds,
    )


def _evaluate_valid(
    network: SASRec | MolarNet, data: SequenceData, evaluator: RankingEvaluator, cfg: SequentialConfig
) -> SplitEvaluation:
    """Validation with every metric and bucket, from the restored best weights."""
    part = data.evaluation["valid"]
    users = encode_users(network, part.histories, cfg.eval_batch_size)
    items = _item_vectors(network)
    return evaluator.evaluate("valid", part.users, users, items)


def _item_vectors(network: SASRec | MolarNet) -> np.ndarray:
    network.eval()
    with torch.no_grad():
        return network.item_vectors().float().numpy().copy()


def run_train(cfg: Mapping[str, Any]) -> TrainResult:
    model_cfg = typed(SequentialConfig, cfg["model"], "model")
    threads = set_threads(model_cfg.num_threads)
    features = RunPaths.from_cfg(cfg).features
    with step(f"load sequences (max_len {model_cfg.max_len}) and interactions from {features}"):
        data = load_sequences(features, model_cfg.max_len)
        interactions = load_interactions(features, cfg["evaluation"])
        data = keep_evaluated_users(data, interactions.sampled_users)
    model_cfg.check_catalog(data.num_items)
    content = content_matrix(cfg, model_cfg)
    seeds = model_cfg.seeds or (int(cfg["seed"]),)
    console.print(
        f"{model_cfg.name}: {data.train.shape[0]:,} train sequences, {data.num_items - FIRST_INDEX:,} items, "
        f"{threads} threads, seeds {list(seeds)}"
    )
    results = [train_seed(cfg, model_cfg, seed, data, interactions, content) for seed in seeds]
    below = _check_floor(cfg, model_cfg, results, data, interactions)
    published = max(results, key=lambda r: r.best_val)
    summary = summarize(results, model_cfg.few_interactions_max)
    if len(results) > 1:
        _log_summary(cfg, model_cfg, summary, results)
    if published.seed in below:
        raise LearningFailedError(
            f"{model_cfg.name} did not learn: {below[published.seed]}, for every seed {list(seeds)}. Nothing "
            "was published or registered; the runs are marked FAILED (tag learning_failed) in MLflow. Check "
            "model.lr and the training curves, or train longer (model.min_steps, model.max_epochs)."
        )
    registration = publish_and_register(cfg, model_cfg, published, data, interactions)
    _print_summary(model_cfg, results, summary, published, registration)
    if below:
        console.print(
            f"[yellow]seeds below the learning floor (marked FAILED in MLflow): "
            f"{', '.join(f'{seed}: {why}' for seed, why in below.items())}[/yellow]",
            soft_wrap=True,
        )
    return TrainResult(model_cfg.name, results, published, summary, registration)


def _check_floor(
    cfg: Mapping[str, Any],
    model_cfg: SequentialConfig,
    results: Sequence[SeedResult],
    data: SequenceData,
    interactions: InteractionData,
) -> dict[int, str]:
    """Seeds whose best validation NDCG@10 is below the learning floor, with the reason (their MLflow runs
    are marked FAILED); empty when the trainer turns the floor off (trainer=smoke)."""
    if not typed(TrainerConfig, cfg["trainer"], "trainer").learning_floor:
        return {}
    evaluator = RankingEvaluator(interactions, cfg["evaluation"], model_cfg.few_interactions_max)
    paths = RunPaths.from_cfg(cfg)
    floor = learning_floor(paths, model_cfg.floor_baselines, evaluator, data, interactions)
    if floor is None:
        return {}
    console.print(f"learning floor: {floor.describe()}")
    below = {}
    for result in results:
        if result.best_val < floor.value:
            reason = f"best validation NDCG@10 {result.best_val:.4f} is below {floor.describe()}"
            flag_failed(cfg["tracking"], result.run_id, reason)
            below[result.seed] = reason
    return below


def summarize(results: Sequence[SeedResult], few_max: int) -> pd.DataFrame:
    """Per-seed key metrics plus ``mean`` and ``std`` (sample std, ddof=1; 0 for one seed) rows."""
    rare = few_interactions_bucket(few_max)
    rows = [
        {
            "seed": str(r.seed),
            "epochs": float(r.epochs),
            "best_epoch": float(r.best_epoch),
            "val_ndcg_at_10": r.best_val,
            "test_ndcg_at_10": r.metric("test", "ndcg", SUMMARY_K),
            "test_hit_rate_at_10": r.metric("test", "hit_rate", SUMMARY_K),
            f"test_ndcg_at_10_{rare}": r.metric("test", "ndcg", SUMMARY_K, rare),
            f"test_hit_rate_at_10_{rare}": r.metric("test", "hit_rate", SUMMARY_K, rare),
        }
        for r in results
    ]
    table = pd.DataFrame(rows)
    numeric = table.drop(columns="seed")
    std = numeric.std(ddof=1) if len(results) > 1 else numeric.std(ddof=0)
    extra = pd.DataFrame([{"seed": "mean", **numeric.mean()}, {"seed": "std", **std}])
    return pd.concat([table, extra], ignore_index=True)


def _log_summary(
    cfg: Mapping[str, Any], model_cfg: SequentialConfig, summary: pd.DataFrame, results: Sequence[SeedResult]
) -> None:
    tags = {"model": model_cfg.name, "stage": "train-seeds", "family": "sequential"}
    with tracked_run(cfg, run_name=f"train-{model_cfg.name}-seeds", tags=tags):
        for stat in ("mean", "std"):
            row = summary[summary["seed"] == stat].iloc[0]
            log_metrics({f"seeds/{k}/{stat}": float(row[k]) for k in summary.columns if k != "seed"})
        log_text(summary.to_csv(index=False), "seeds_summary.csv")
        set_tags({"seed_runs": ",".join(r.run_id for r in results)})


def publish_and_register(
    cfg: Mapping[str, Any],
    model_cfg: SequentialConfig,
    result: SeedResult,
    data: SequenceData,
    interactions: InteractionData,
) -> Registration:
    """Publish ``train/<model>/`` as ``recsys evaluate`` publishes a baseline, plus the vectors and the model,
    then log + register the ``<prefix>-sequential`` pyfunc in the seed's run."""
    network = result.network
    items = _item_vectors(network)
    users = np.zeros((interactions.num_users, items.shape[1]), dtype=np.float32)
    users[data.full_users] = encode_users(network, data.full_histories, model_cfg.eval_batch_size)
    evaluation = EvaluateResult(
        model_cfg.name, interactions, SequenceScorerSlot(model_cfg.name), result.evaluations
    )
    out = RunPaths.from_cfg(cfg).train(model_cfg.name)
    version = f"{model_cfg.name}:{result.run_id}"
    with (
        step(f"publish metrics, recommendations, vectors and model to {out}"),
        publish_atomically(out) as staging,
    ):
        inner = staging / "evaluation"
        write_evaluation(evaluation, inner, version, result.run_id)
        for child in inner.iterdir():
            child.rename(staging / child.name)
        inner.rmdir()
        np.save(staging / "item_vectors.npy", items)
        np.save(staging / USER_VECTORS, users)
        save_model(network, model_cfg, staging / MODEL_DIR)
        manifest = read_manifest(staging)
        extra = {**manifest.extra, "user_vectors": USER_VECTORS, "family": "sequential"}
        write_manifest(staging, replace(manifest, extra=extra))
    index_cfg = typed(IndexConfig, cfg["index"], "index")
    item_idx = np.arange(FIRST_INDEX, interactions.num_items, dtype=np.int64)
    k = int(cfg["evaluation"]["candidates_k"])
    example = [str(x) for x in interactions.item_ids[item_idx[:3]]]
    with resume_run(cfg["tracking"], result.run_id), tempfile.TemporaryDirectory() as tmp:
        index = ItemIndex.build(np.ascontiguousarray(items[item_idx]), item_idx, index_cfg, version)
        index_dir = index.save(Path(tmp) / "index")
        info = log_sequential(
            out / MODEL_DIR,
            index_dir,
            interactions.item_ids,
            interactions.snapshot_popularity(),
            k,
            example,
            "sequential",
        )
        return register_and_gate(
            info.model_uri,
            f"{cfg['prefix']}-sequential",
            result.run_id,
            PROMOTION_METRIC,
            interactions.eval_set,
        )


def _print_summary(
    model_cfg: SequentialConfig,
    results: Sequence[SeedResult],
    summary: pd.DataFrame,
    published: SeedResult,
    registration: Registration,
) -> None:
    columns = [c for c in summary.columns]
    rows = [[row["seed"], *(f"{row[c]:.4f}" for c in columns[1:])] for _, row in summary.iterrows()]
    print_table(f"{model_cfg.name}: test metrics (full ranking) per seed", columns, rows)
    print_table(
        f"{model_cfg.name}: published",
        ["what", "value"],
        [
            ("seed (best validation NDCG@10)", str(published.seed)),
            ("MLflow run", published.run_id),
            ("registered", f"{registration.name} v{registration.version}"),
            ("champion?", f"{registration.decision.promote} ({registration.decision.reason})"),
            ("train seconds (all seeds)", f"{sum(r.seconds for r in results):.1f}"),
        ],
    )


def train_stage(cfg: Mapping[str, Any]) -> StageResult:
    """The family's ``train`` stage; its metrics are those the published seed's run logged."""
    result = run_train(cfg)
    run_id = result.published.run_id
    folder = RunPaths.from_cfg(cfg).train(result.model)
    return StageResult(run_metrics(cfg["tracking"], run_id), run_id, (folder,))


class SequentialRetrieverSource:
    """The family's :class:`recsys.stage.Retriever`: the vectors published under ``train/<model>`` (user
    vectors from the model's own encoder over each full history) and the sequential retriever pyfunc."""

    def published(self, paths: RunPaths, model: str) -> PublishedVectors:
        return read_published_vectors(paths.train(model))

    def log_pyfunc(
        self,
        vectors: PublishedVectors,
        index_dir: Path,
        item_ids: np.ndarray,
        popularity: np.ndarray,
        k: int,
        example: list[str],
    ) -> Any:
        return log_retriever_for_index(vectors.folder, index_dir, item_ids, popularity, k, example)


FAMILY = ModelFamily(
    "sequential", train=train_stage, retriever=SequentialRetrieverSource(), scorer=SequenceScorerSource()
)
"""SASRec and Molar: ``train`` publishes their vectors; ``recsys index`` serves them; a two-stage
recommender retrieves candidates with them."""
