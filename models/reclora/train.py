"""``recsys train model=reclora``: the RecLoRA ablation in one command, logged to MLflow.

1. conventional: the DLRM on every training row with the long history (``models.reclora.conventional``),
   trained once with the root ``seed`` and cached per (snapshot, settings): like the paper's pretrained
   CRM it is frozen, so it is not retrained per LM seed;
2. per seed (``model.seeds``: adapter init, Few2Many draw, shuffles), for each retriever setting
   (``model.retriever_settings``: on = content-retrieved short history, off = the K most recent items)
   and each arm (``model.arms``): a fresh frozen backbone with a shared LoRA (K = 1) or the personalized
   meta-LoRA bank (mixture weights from the frozen DLRM's user vector), trained on the Few2Many sample.

The summary keys are ``{split}/{metric}_mean/{arm}`` and ``_std`` (the conventional row has one run).

Every model is scored on the same seeded subset of the valid and test rows (``model.train.eval_max_samples``,
drawn with the root ``seed`` so all seeds share it); AUC / GAUC / LogLoss come from
``recsys.evaluation.evaluate_ctr``. MLflow: one parent run (``train-reclora``) with the summary and one
nested run per (seed, arm, retriever) with
``{split}/{metric}``. The personalized + retriever model of the first seed is logged as a pyfunc in its
nested run and registered as ``<prefix>-reclora`` behind the test-AUC promotion gate. The long-history
CTR table, the cached conventional model and the adapters are written under the stage's scratch folder
(``_work/train/reclora``); ``train/reclora`` (the adapters and a manifest recording the run and the summary)
is published in one rename at the end, so a killed or failed ablation never leaves a half-written one.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.common.content import load_content_vectors
from models.reclora.adapters import save_bank, save_peft_adapter
from models.reclora.config import RecLoRAConfig
from models.reclora.conventional import (
    Conventional,
    ctr_columns,
    train_conventional,
    write_long_history_ctr,
)
from models.reclora.fit import LMData, score_lm, train_lm, with_prefix
from models.reclora.history import EventLog, eval_indices, few2many_indices
from models.reclora.network import RecLoRAModel, answer_token_ids, backbone_path, load_backbone
from models.reclora.prompts import ItemTexts, UserProfiles
from models.reclora.pyfunc import example_requests, log_reclora
from models.reclora.samples import PromptBuilder, SampleSet, lm_data
from recsys.config import typed
from recsys.console import console, print_table
from recsys.evaluation import evaluate_ctr
from recsys.manifest import Manifest, publish_atomically, read_manifest, write_manifest
from recsys.paths import TRAIN, RunPaths
from recsys.schema import CATEGORIES, ITEM_ID, ITEM_IDX, RATING, TIMESTAMP, TITLE, USER_ID, USER_IDX
from recsys.stage import ModelFamily, StageResult
from recsys.tables import read_arrow
from recsys.tracking.registry import Registration, register_and_gate
from recsys.tracking.runs import log_metric_table, log_metrics, nested_run, resume_run, tracked_run

PROMOTION_METRIC = "test/auc"
CONVENTIONAL = "conventional"
ADAPTERS = "adapters"
PERSONALIZED = "personalized"
SPLIT_NAMES = {"val": "valid", "test": "test"}
# Requests stored as the pyfunc's input example.
EXAMPLE_ROWS = 3


@dataclass
class ArmResult:
    seed: int
    arm: str
    retriever: bool | None
    metrics: dict[str, float]
    seconds: float

    @property
    def label(self) -> str:
        if self.retriever is None:
            return self.arm
        return f"{self.arm}{'+retriever' if self.retriever else ''}"


@dataclass
class RecLoRAResult:
    run_id: str
    results: list[ArmResult]
    summary: dict[str, dict[str, float]]
    registration: Registration | None
    adapters: dict[str, Path] = field(default_factory=dict)


def build_model(
    rcfg: RecLoRAConfig, arm: str, user_dim: int, seed: int, backbone_folder: Path
) -> RecLoRAModel:
    """A fresh frozen backbone with the arm's LoRA; initial LoRA / head / mixer weights seeded."""
    backbone, tokenizer = load_backbone(rcfg.backbone, backbone_folder)
    torch.manual_seed(seed)
    answers = answer_token_ids(tokenizer, rcfg.backbone) if rcfg.backbone.kind == "causal" else None
    return RecLoRAModel(
        backbone,
        rcfg.backbone.kind,
        rcfg.lora,
        rcfg.lora.num_meta if arm == PERSONALIZED else 1,
        pooling=rcfg.backbone.pooling,
        answer_ids=answers,
        user_dim=user_dim,
        mixer=rcfg.mixer,
    )


def _metrics(split: str, samples: SampleSet, scores: np.ndarray) -> dict[str, float]:
    table = evaluate_ctr(samples.labels.astype(np.float64), scores, samples.users)
    return log_metric_table(table, split)


def _limit(value: Any) -> int | None:
    """Trainer ``limit_*_batches`` as a batch count (ints only; fractions and null mean no limit)."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def run_train(cfg: Mapping[str, Any]) -> RecLoRAResult:
    rcfg = typed(RecLoRAConfig, cfg["model"], "model")
    if rcfg.train.num_threads:
        torch.set_num_threads(rcfg.train.num_threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    paths = RunPaths.from_cfg(cfg)
    features = paths.features
    work = paths.work(TRAIN, rcfg.name)
    shutil.rmtree(work / ADAPTERS, ignore_errors=True)  # an earlier (killed) ablation's arms
    trainer_cfg = cfg["trainer"]
    train_limit = _limit(trainer_cfg.get("limit_train_batches"))
    eval_limit = _limit(trainer_cfg.get("limit_test_batches"))
    eval_max = rcfg.train.eval_max_samples
    if eval_limit is not None:
        eval_max = min(eval_max or eval_limit * rcfg.train.batch_size, eval_limit * rcfg.train.batch_size)

    events = read_arrow(features / "split", columns=[USER_IDX, ITEM_IDX, TIMESTAMP, RATING])
    log = EventLog.from_arrow(events, str(features / "split"))
    ctr_long = write_long_history_ctr(features / "ctr", log, rcfg.long_history, work)
    table = read_arrow(ctr_long, columns=ctr_columns(rcfg.dlrm))
    manifest = read_manifest(ctr_long)
    num_items = int(manifest.counts["num_items"])
    content = load_content_vectors(cfg, rcfg.retriever_modality)
    items = ItemTexts.from_content(
        read_arrow(features / "content", columns=[ITEM_IDX, TITLE, CATEGORIES]),
        num_items,
        rcfg.prompt.title_chars,
    )
    profiles = UserProfiles.from_features(features, rcfg.prompt.user_attributes)
    folder = backbone_path(rcfg.backbone)
    _, tokenizer = load_backbone(rcfg.backbone, folder)
    builder = PromptBuilder(items, profiles, content.vectors, rcfg.prompt, rcfg.retriever_pool, tokenizer)
    num_train = len(SampleSet.select(table, "train"))
    eval_sets = {}
    for split, name in SPLIT_NAMES.items():
        rows = len(SampleSet.select(table, name))
        eval_sets[split] = SampleSet.select(table, name, eval_indices(rows, eval_max, int(cfg["seed"])))
    console.print(
        f"reclora: {num_train} training rows (DLRM), Few2Many {rcfg.train.few2many_fraction:g} for the LM; "
        f"scoring {len(eval_sets['val'])} valid / {len(eval_sets['test'])} test rows per model."
    )

    user_dim = 2 * rcfg.dlrm.embedding_dim
    # Frozen lower blocks are identical in every arm: one model computes their cached output for all.
    prefix_model = build_model(rcfg, "shared", user_dim, int(cfg["seed"]), folder)
    eval_prefix: dict[tuple[str, bool], torch.Tensor | None] = {}
    results: list[ArmResult] = []
    registration: Registration | None = None
    adapters: dict[str, Path] = {}
    registered_arm = PERSONALIZED if PERSONALIZED in rcfg.arms else rcfg.arms[0]
    registered_retriever = rcfg.retriever_settings[0] if rcfg.retriever_settings else False
    with tracked_run(
        cfg, run_name=f"train-{rcfg.name}", tags={"model": rcfg.name, "stage": "train"}
    ) as parent:
        # The conventional model is pretrained and frozen (as RecLoRA's CRM): one DLRM per snapshot, trained
        # with the root seed; model.seeds vary the LM side (adapter init, Few2Many draw, shuffles).
        tick = time.perf_counter()
        conventional = train_conventional(rcfg.dlrm, ctr_long, int(cfg["seed"]), trainer_cfg, work)
        conventional_params = {"arm": CONVENTIONAL, "seed": cfg["seed"], "long_history": rcfg.long_history}
        with nested_run(f"{CONVENTIONAL}-seed{cfg['seed']}", conventional_params):
            metrics: dict[str, float] = {}
            for split, samples in eval_sets.items():
                metrics.update(_metrics(split, samples, conventional.score(samples.rows)))
        results.append(ArmResult(int(cfg["seed"]), CONVENTIONAL, None, metrics, time.perf_counter() - tick))
        for seed in rcfg.seeds:
            train_set = SampleSet.select(
                table, "train", few2many_indices(num_train, rcfg.train.few2many_fraction, seed)
            )
            for retriever in rcfg.retriever_settings:
                train_data = lm_data(train_set, log, builder, conventional, rcfg.long_history, retriever)
                data = {"train": with_prefix(prefix_model, train_data, rcfg.train.batch_size)}
                for split, samples in eval_sets.items():
                    plain = lm_data(samples, log, builder, conventional, rcfg.long_history, retriever)
                    if (split, retriever) not in eval_prefix:  # eval prompts are the same for every seed
                        eval_prefix[split, retriever] = with_prefix(
                            prefix_model, plain, rcfg.train.batch_size
                        ).prefix
                    data[split] = replace(plain, prefix=eval_prefix[split, retriever])
                for arm in rcfg.arms:
                    result, run_id, model = _fit_arm(
                        rcfg, arm, retriever, seed, data, eval_sets, folder, train_limit
                    )
                    results.append(result)
                    first = seed == rcfg.seeds[0] and retriever == registered_retriever
                    if first and arm != registered_arm:
                        adapters[arm] = _save_adapters(rcfg, model, work, folder)
                    if first and arm == registered_arm:
                        registration, adapters[arm] = _save_and_register(
                            cfg,
                            rcfg,
                            model,
                            conventional,
                            builder,
                            run_id,
                            work,
                            folder,
                            retriever,
                            manifest,
                            log,
                            eval_sets["test"],
                        )
        summary = _summary(results)
        for label, values in summary.items():
            log_metrics({f"{k}/{label.replace('+', '_')}": v for k, v in values.items()})
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        log_metrics({"wall_seconds": wall, "cpu_seconds": cpu})
    _print_summary(rcfg, summary, registration, wall, cpu)
    published = _publish(paths.train(rcfg.name), work, rcfg, manifest, parent.info.run_id, summary, adapters)
    return RecLoRAResult(parent.info.run_id, results, summary, registration, published)


def _publish(
    out: Path,
    work: Path,
    rcfg: RecLoRAConfig,
    ctr: Manifest,
    run_id: str,
    summary: dict[str, dict[str, float]],
    adapters: dict[str, Path],
) -> dict[str, Path]:
    """``train/reclora``: the adapters copied from the scratch folder ``work``, then the manifest naming
    each arm's folder and the summary; returns each arm's published folder."""
    relative = {arm: path.relative_to(work) for arm, path in adapters.items()}
    extra = {
        "model": rcfg.name,
        "family": "reclora",
        "run_id": run_id,
        "adapters": {arm: str(folder) for arm, folder in relative.items()},
        "summary": summary,
    }
    manifest = Manifest(
        TRAIN,
        0,
        [],
        {"num_items": int(ctr.counts["num_items"])},
        config_hash=ctr.config_hash,
        source_fingerprint=ctr.source_fingerprint,
        format="model",
        extra=extra,
    )
    with publish_atomically(out) as staging:
        for folder in relative.values():
            shutil.copytree(work / folder, staging / folder)
        write_manifest(staging, manifest)
    return {arm: out / folder for arm, folder in relative.items()}


def train_stage(cfg: Mapping[str, Any]) -> StageResult:
    """The family's ``train`` stage; its metrics are the ablation summary as ``{label}/{key}``."""
    result = run_train(cfg)
    metrics = {
        f"{label}/{key}": float(value)
        for label, values in result.summary.items()
        for key, value in values.items()
    }
    return StageResult(metrics, result.run_id, (RunPaths.from_cfg(cfg).train(str(cfg["model"]["name"])),))


FAMILY = ModelFamily("reclora", train=train_stage)
"""RecLoRA's one stage: the ablation (conventional, shared and personalized LoRA), its registered model."""


def _fit_arm(
    rcfg: RecLoRAConfig,
    arm: str,
    retriever: bool,
    seed: int,
    data: dict[str, LMData],
    eval_sets: dict[str, SampleSet],
    backbone_folder: Path,
    train_limit: int | None,
) -> tuple[ArmResult, str, RecLoRAModel]:
    tick = time.perf_counter()
    label = f"{arm}{'+retriever' if retriever else ''}"
    user_dim = int(data["train"].user_vectors.shape[1])
    model = build_model(rcfg, arm, user_dim, seed, backbone_folder)
    params = {"arm": arm, "retriever": retriever, "seed": seed, "few2many_samples": len(data["train"])}
    with nested_run(f"{label}-seed{seed}", params) as run:
        losses = train_lm(
            model, data["train"], rcfg.train, seed, limit_batches=train_limit, description=label
        )
        for step_index, loss in enumerate(losses):
            log_metrics({"train/loss": loss}, step=step_index)
        metrics: dict[str, float] = {}
        for split, samples in eval_sets.items():
            scores = score_lm(model, data[split], rcfg.train.batch_size, description=f"{label} {split}")
            metrics.update(_metrics(split, samples, scores))
        seconds = time.perf_counter() - tick
        log_metrics({"seconds": seconds})
    return ArmResult(seed, arm, retriever, metrics, seconds), run.info.run_id, model


def _save_and_register(
    cfg: Mapping[str, Any],
    rcfg: RecLoRAConfig,
    model: RecLoRAModel,
    conventional: Conventional,
    builder: PromptBuilder,
    run_id: str,
    work: Path,
    backbone_folder: Path,
    retriever: bool,
    manifest: Any,
    log: EventLog,
    test: SampleSet,
) -> tuple[Registration, Path]:
    """Adapters under ``<work>/adapters/`` (PEFT folder for a shared model), pyfunc logged and gated."""
    features = RunPaths.from_cfg(cfg).features
    num_items = len(builder.items.titles)
    item_ids = [""] * num_items
    vocab = read_arrow(features / "vocab_item", columns=[ITEM_ID, ITEM_IDX])
    for item_id, idx in zip(vocab[ITEM_ID].to_pylist(), vocab[ITEM_IDX].to_pylist(), strict=True):
        if 0 <= idx < num_items:
            item_ids[idx] = str(item_id)
    vocab = read_arrow(features / "vocab_user", columns=[USER_ID, USER_IDX])
    user_ids = {
        int(i): str(u) for u, i in zip(vocab[USER_ID].to_pylist(), vocab[USER_IDX].to_pylist(), strict=True)
    }
    out = _save_adapters(rcfg, model, work, backbone_folder)
    with resume_run(cfg["tracking"], run_id, nested=True):
        n = min(EXAMPLE_ROWS, len(test))
        example = example_requests(
            log, test.users[:n], test.items[:n], test.timestamps[:n], item_ids, user_ids
        )
        info = log_reclora(
            model, rcfg, conventional, builder, backbone_folder, retriever, item_ids, user_ids, example
        )
    eval_set = (
        f"{manifest.source_fingerprint[:16]}-{manifest.config_hash[:16]}-"
        f"eval{rcfg.train.eval_max_samples}-seed{cfg['seed']}"
    )
    registration = register_and_gate(
        info.model_uri, f"{cfg['prefix']}-reclora", run_id, PROMOTION_METRIC, eval_set
    )
    return registration, out


def _save_adapters(rcfg: RecLoRAConfig, model: RecLoRAModel, work: Path, backbone_folder: Path) -> Path:
    """``<work>/adapters/{shared,personalized}/``: the bank layout, plus ``peft/`` for the shared LoRA."""
    out = work / ADAPTERS / ("personalized" if model.num_meta > 1 else "shared")
    settings = {
        "kind": rcfg.backbone.kind,
        "pooling": rcfg.backbone.pooling,
        "temperature": rcfg.mixer.temperature,
        "user_dim": None if model.mixer is None else 2 * rcfg.dlrm.embedding_dim,
    }
    save_bank(model, rcfg.lora, out, settings)
    if model.num_meta == 1:
        save_peft_adapter(model, rcfg.lora, out / "peft", str(backbone_folder))
    return out


def _summary(results: list[ArmResult]) -> dict[str, dict[str, float]]:
    """``{label: {"{split}/{metric}_mean": ..., "_std": ..., "seconds_mean": ...}}`` over seeds."""
    out: dict[str, dict[str, float]] = {}
    for label in dict.fromkeys(r.label for r in results):
        group = [r for r in results if r.label == label]
        values: dict[str, float] = {}
        for key in group[0].metrics:
            series = np.array([r.metrics.get(key, np.nan) for r in group], dtype=np.float64)
            values[f"{key}_mean"] = float(np.nanmean(series)) if np.isfinite(series).any() else float("nan")
            values[f"{key}_std"] = float(np.nanstd(series)) if np.isfinite(series).any() else float("nan")
        values["seconds_mean"] = float(np.mean([r.seconds for r in group]))
        out[label] = values
    return out


def _print_summary(
    rcfg: RecLoRAConfig,
    summary: dict[str, dict[str, float]],
    registration: Registration | None,
    wall: float,
    cpu: float,
) -> None:
    def cell(values: dict[str, float], key: str) -> str:
        mean, std = values.get(f"{key}_mean", float("nan")), values.get(f"{key}_std", float("nan"))
        return f"{mean:.4f} ± {std:.4f}" if len(rcfg.seeds) > 1 else f"{mean:.4f}"

    rows = [
        (
            label,
            cell(v, "val/auc"),
            cell(v, "val/logloss"),
            cell(v, "test/auc"),
            cell(v, "test/logloss"),
            f"{v['seconds_mean']:.0f}",
        )
        for label, v in summary.items()
    ]
    title = f"reclora ablation: {len(rcfg.seeds)} seed(s), wall {wall:.0f}s, process CPU {cpu:.0f}s"
    print_table(title, ["model", "val AUC", "val LogLoss", "test AUC", "test LogLoss", "s/seed"], rows)
    if registration is not None:
        console.print(
            f"registered {registration.name} v{registration.version}; "
            f"champion: {registration.decision.promote} "
            f"({registration.decision.reason})"
        )
