"""RecLoRA's conventional model: the project's DLRM, trained on ALL training samples with the LONG history.

Long history: the features stage's ``recent_item_idx`` bag holds ``features.ctr.recent_items`` items (10 by
default), shared by every model of the snapshot. RecLoRA's conventional model should see the long side of
the Long-Short retriever (60+), so :func:`write_long_history_ctr` writes a copy of the ``ctr`` output whose
``recent_item_idx`` holds the ``model.conventional.long_history`` most recent strictly earlier items (same
schema and manifest counts, so ``models.dlrm`` reads it unchanged). Both the copy and the trained DLRM are
cached under ``<root>/<run.date>/_work/train/reclora/`` by a hash of their inputs, so an ablation over several
arms and a rerun train the DLRM once per seed.

User vector for the mixer (the paper feeds the CRM's user representation; DLRM has no single user tower,
so we take what the DLRM itself looks up for the user): ``u = [t_user row ; mean of t_recent_items rows
over the long history]``, width ``2 * embedding_dim``. The first half is the user's id embedding, the second
the DLRM's pooled long-history embedding at the sample's time (so it also exists for users the DLRM never
saw in training).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from models.common.trainer import build_trainer
from models.dlrm.config import DLRMConfig
from models.dlrm.data import CTRBatchBuilder, CTRDataModule
from models.dlrm.module import DLRMLitModule
from models.dlrm.network import DLRMRanker
from models.dlrm.pyfunc import (
    ARTIFACT_CONFIG,
    ARTIFACT_COUNTS,
    ARTIFACT_STATE,
    build_cpu_ranker,
    config_to_mapping,
    mapping_to_config,
    save_artifacts,
)
from models.dlrm.strategy import TorchRecStrategy
from models.reclora.history import NO_EVENT, EventLog, recent_events
from recsys.config import typed
from recsys.console import step
from recsys.errors import ConfigError
from recsys.manifest import publish_atomically, read_manifest, write_manifest
from recsys.schema import ITEM_IDX, OOV_INDEX, SPLIT, TIMESTAMP, USER_IDX
from recsys.settings import TrainerConfig
from recsys.tables import read_arrow

RECENT_ITEMS = "recent_item_idx"
USER_TABLE = "t_user"
HISTORY_TABLE = "t_recent_items"
_STATE_PREFIX = "model.sparse_arch.embedding_bag_collection.embedding_bags"
_ARTIFACT_FILES = {
    ARTIFACT_CONFIG: "model_config.json",
    ARTIFACT_COUNTS: "counts.json",
    ARTIFACT_STATE: "ranker_state_dict.pt",
}
# Rows per DLRM scoring batch (memory only).
_SCORE_BATCH = 4096


def _digest(payload: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def long_history_items(log: EventLog, users: np.ndarray, timestamps: np.ndarray, length: int) -> np.ndarray:
    """``[N, length]`` item_idx of the most recent strictly earlier events, ``NO_EVENT`` padding."""
    start, end = log.earlier(users, timestamps)
    events = recent_events(start, end, length)
    return np.where(events != NO_EVENT, log.items[np.maximum(events, 0)], NO_EVENT)


def write_long_history_ctr(ctr: Path, log: EventLog, length: int, parent: Path) -> Path:
    """A copy of the ``ctr`` output with ``recent_item_idx`` = the ``length`` most recent earlier items.

    Returns the cached folder when one with the same input fingerprint exists (published atomically).
    """
    manifest = read_manifest(ctr)
    key = _digest({"ctr": [manifest.config_hash, manifest.source_fingerprint], "long_history": length})
    folder = parent / f"ctr_long-{key}"
    if (folder / "manifest.json").is_file():
        return folder
    with step(f"long-history ctr copy ({length} items) -> {folder}"):
        table = read_arrow(ctr)
        users = np.asarray(table[USER_IDX].to_numpy(), dtype=np.int64)
        times = np.asarray(table[TIMESTAMP].to_numpy(), dtype=np.int64)
        items = long_history_items(log, users, times, length)
        present = items != NO_EVENT
        offsets = np.concatenate([[0], np.cumsum(present.sum(1))]).astype(np.int32)
        bags = pa.ListArray.from_arrays(pa.array(offsets), pa.array(items[present], type=pa.int64()))
        table = table.set_column(table.column_names.index(RECENT_ITEMS), RECENT_ITEMS, bags)
        # Content-addressed: a copy another process published first is the same data and is kept.
        with publish_atomically(folder, replace=False) as staging:
            pq.write_to_dataset(table, root_path=str(staging), partition_cols=[SPLIT])
            extra = {**manifest.extra, "long_history": length, "derived_from": str(ctr)}
            write_manifest(staging, replace(manifest, name=folder.name, extra=extra))
    return folder


@dataclass(frozen=True)
class Conventional:
    """A trained DLRM on the CPU plus its manifest counts; scores rows and gives user vectors."""

    config: DLRMConfig
    counts: dict[str, int]
    ranker: DLRMRanker
    folder: Path

    @classmethod
    def load(cls, folder: Path) -> Conventional:
        config = mapping_to_config(json.loads((folder / _ARTIFACT_FILES[ARTIFACT_CONFIG]).read_text()))
        counts = {
            str(k): int(v)
            for k, v in json.loads((folder / _ARTIFACT_FILES[ARTIFACT_COUNTS]).read_text()).items()
        }
        state = torch.load(folder / _ARTIFACT_FILES[ARTIFACT_STATE], map_location="cpu", weights_only=True)
        return cls(config, counts, build_cpu_ranker(config, counts, state), folder)

    def table(self, name: str) -> np.ndarray:
        """Embedding rows ``[rows, D]`` of table ``name``."""
        weight = self.ranker.state_dict()[f"{_STATE_PREFIX}.{name}.weight"]
        return np.asarray(weight.detach().cpu().numpy(), dtype=np.float32)

    def score(self, rows: pa.Table) -> np.ndarray:
        """``[N]`` click probabilities of CTR rows (the columns the DLRM config names)."""
        builder = CTRBatchBuilder(self.config, self.folder)
        out = []
        with torch.no_grad():
            for lo in range(0, rows.num_rows, _SCORE_BATCH):
                batch = builder(rows.slice(lo, _SCORE_BATCH))
                out.append(torch.sigmoid(self.ranker(batch)).double().numpy())
        return np.concatenate(out) if out else np.zeros(0)


def user_vectors(
    user_rows: np.ndarray, history_rows: np.ndarray, users: np.ndarray, long_items: np.ndarray
) -> np.ndarray:
    """``[N, 2D]`` mixer inputs: ``[t_user[user] ; mean_{i in long history} t_recent_items[i]]``.

    Args:
        user_rows: ``[num_users, D]`` the DLRM's user table.
        history_rows: ``[num_items, D]`` the DLRM's recent-items table.
        users: ``[N]`` user_idx (unknown users -> OOV row).
        long_items: ``[N, L]`` item_idx, ``NO_EVENT`` padding (an empty history gives a zero half).
    """
    users = np.where((users >= 0) & (users < user_rows.shape[0]), users, OOV_INDEX)
    present = (long_items != NO_EVENT) & (long_items < history_rows.shape[0])
    gathered = history_rows[np.where(present, long_items, 0)] * present[..., None]
    pooled = gathered.sum(1) / np.maximum(present.sum(1, keepdims=True), 1)
    return np.concatenate([user_rows[users], pooled], axis=1).astype(np.float32)


def train_conventional(
    cfg: DLRMConfig, ctr_long: Path, seed: int, trainer_cfg: Mapping[str, Any], parent: Path
) -> Conventional:
    """Train the DLRM on every training row of ``ctr_long`` (single process, CPU), or load the cached one.

    The cache key covers the data (manifest), the DLRM config, the seed and the trainer's batch limits.
    """
    manifest = read_manifest(ctr_long)
    limits = {k: trainer_cfg.get(k) for k in ("limit_train_batches", "limit_val_batches", "accelerator")}
    key = _digest(
        {
            "data": [manifest.config_hash, manifest.source_fingerprint, manifest.extra.get("long_history")],
            "model": config_to_mapping(cfg),
            "seed": seed,
            "trainer": limits,
        }
    )
    folder = parent / f"dlrm-{key}"
    if (folder / _ARTIFACT_FILES[ARTIFACT_STATE]).is_file():
        return Conventional.load(folder)
    if "t_user" not in {t.name for t in cfg.tables} or HISTORY_TABLE not in {t.name for t in cfg.tables}:
        raise ConfigError(
            f"model.conventional.dlrm.tables must contain {USER_TABLE!r} and {HISTORY_TABLE!r} (the mixer's "
            f"user vector is built from them); found {[t.name for t in cfg.tables]}."
        )
    pl.seed_everything(seed, workers=True)
    datamodule = CTRDataModule(ctr_long, cfg, seed=seed, shuffle_buffer_rows=cfg.shuffle_buffer_rows)
    module = DLRMLitModule(cfg, datamodule.counts)
    trainer = build_trainer(
        typed(TrainerConfig, trainer_cfg, "trainer"),
        devices=1,
        num_nodes=1,
        strategy=TorchRecStrategy(),
        max_epochs=cfg.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        enable_progress_bar=True,
    )
    with step(f"DLRM (conventional model) on every training row, seed {seed}"):
        trainer.fit(module, datamodule=datamodule)
    with publish_atomically(folder, replace=False) as staging:
        save_artifacts(module, cfg, datamodule.counts, staging)
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return Conventional.load(folder)


def ctr_columns(cfg: DLRMConfig) -> list[str]:
    """Columns of the ctr output the DLRM reads (plus keys the ablation needs)."""
    wanted = [USER_IDX, ITEM_IDX, TIMESTAMP, *cfg.sparse_features, *cfg.dense_features, "label", SPLIT]
    return list(dict.fromkeys(wanted))
