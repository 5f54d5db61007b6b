"""The RecLoRA scorer as an MLflow pyfunc: ``(user_id, item_id, history) -> click probability``.

Input rows (pandas): ``user_id`` (str), ``item_id`` (str, the candidate), ``history`` (list of item_id str,
oldest first; only items the user consumed before the request) and optionally ``history_ratings`` (list of
float, same length; shown in the prompt as ``4/5``). Unknown users / items fall back to the OOV row and an
``unknown`` title. Output: ``DataFrame({"score": [B]})``.

The request goes through the same code as training: the history becomes a small :class:`EventLog` (one
"user" per request row), the retriever picks the short history, the prompt is built and tokenized in one
batched call, and the frozen conventional model's user vector (user row + long-history mean) drives the
mixer. Artifacts (one folder):

- ``backbone/``: the backbone's config, weights and tokenizer files (a copy of the local folder);
- ``adapters/``: ``adapters.safetensors`` + ``reclora_adapter.json`` (layout in ``models.reclora.adapters``);
- ``settings.json``: backbone kind / pooling / answer words, prompt, lora, mixer, retriever, long history;
- ``items.parquet``: ``item_idx, item_id, title, genres, vector``; ``users.parquet``: ``user_idx, user_id,
  profile``; ``conventional.npz``: the DLRM's ``t_user`` and ``t_recent_items`` rows.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from models.reclora.adapters import load_bank, save_bank
from models.reclora.config import BackboneConfig, LoRAConfig, MixerConfig, PromptConfig, RecLoRAConfig
from models.reclora.conventional import Conventional, long_history_items, user_vectors
from models.reclora.fit import LMData, score_lm
from models.reclora.history import EventLog
from models.reclora.network import RecLoRAModel, answer_token_ids, load_backbone
from models.reclora.prompts import ItemTexts, UserProfiles
from models.reclora.samples import HISTORY_TABLE, USER_TABLE, PromptBuilder
from recsys.config import as_dict, typed
from recsys.errors import InputError
from recsys.schema import ITEM_ID, OOV_INDEX, USER_ID
from recsys.tracking.models import ModelInfo, PythonModel, log_pyfunc

ARTIFACT = "reclora"
MODEL_NAME = "reclora"
SCORE = "score"
HISTORY = "history"
HISTORY_RATINGS = "history_ratings"
_BACKBONE_FILES = (
    "config.json",
    "model.safetensors",
    "pytorch_model.bin",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)
# Third-party modules the scorer imports when it loads and predicts (its pinned requirements).
SERVING_MODULES = (
    "torch",
    "transformers",
    "peft",
    "safetensors",
    "tokenizers",
    "lightning",
    "torchrec",
    "fbgemm_gpu",
)
# Rows scored per batch inside predict (memory only).
_PREDICT_BATCH = 64


def save_reclora_artifacts(
    folder: Path,
    model: RecLoRAModel,
    rcfg: RecLoRAConfig,
    conventional: Conventional,
    builder: PromptBuilder,
    backbone_folder: Path,
    retriever: bool,
    item_ids: list[str],
    user_ids: dict[int, str],
) -> None:
    """Write the artifact folder described in the module docstring."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "backbone").mkdir(exist_ok=True)
    for name in _BACKBONE_FILES:
        if (backbone_folder / name).is_file():
            shutil.copy2(backbone_folder / name, folder / "backbone" / name)
    save_bank(model, rcfg.lora, folder / "adapters", {"kind": rcfg.backbone.kind})
    settings = {
        "backbone": as_dict(rcfg.backbone),
        "prompt": as_dict(rcfg.prompt),
        "lora": as_dict(rcfg.lora),
        "mixer": as_dict(rcfg.mixer),
        "retriever": retriever,
        "retriever_pool": rcfg.retriever_pool,
        "long_history": rcfg.long_history,
        "num_meta": model.num_meta,
        "user_dim": int(2 * conventional.table(USER_TABLE).shape[1]),
    }
    (folder / "settings.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
    vectors = np.asarray(builder.vectors, dtype=np.float32)
    pq.write_table(
        pa.table(
            {
                "item_idx": np.arange(len(item_ids), dtype=np.int64),
                ITEM_ID: item_ids,
                "title": builder.items.titles,
                "genres": builder.items.genres,
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
            }
        ),
        folder / "items.parquet",
    )
    users = sorted(user_ids)
    pq.write_table(
        pa.table(
            {
                "user_idx": np.array(users, dtype=np.int64),
                USER_ID: [user_ids[u] for u in users],
                "profile": [builder.profiles.get(u) for u in users],
            }
        ),
        folder / "users.parquet",
    )
    np.savez(
        folder / "conventional.npz",
        t_user=conventional.table(USER_TABLE),
        t_recent_items=conventional.table(HISTORY_TABLE),
    )


class RecLoRAScorer(PythonModel):
    """MLflow pyfunc: ``predict(DataFrame[user_id, item_id, history(, history_ratings)]) -> {"score"}``."""

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts[ARTIFACT])
        s = json.loads((folder / "settings.json").read_text())
        saved_backbone = {**s["backbone"], "path": str(folder / "backbone")}
        backbone_cfg = typed(BackboneConfig, saved_backbone, "settings.backbone")
        self.prompt = typed(PromptConfig, s["prompt"], "settings.prompt")
        lora = typed(LoRAConfig, s["lora"], "settings.lora")
        backbone, tokenizer = load_backbone(backbone_cfg, folder / "backbone")
        answers = answer_token_ids(tokenizer, backbone_cfg) if backbone_cfg.kind == "causal" else None
        self.model = RecLoRAModel(
            backbone,
            backbone_cfg.kind,
            lora,
            int(s["num_meta"]),
            pooling=backbone_cfg.pooling,
            answer_ids=answers,
            user_dim=int(s["user_dim"]),
            mixer=typed(MixerConfig, s["mixer"], "settings.mixer"),
        )
        load_bank(self.model, folder / "adapters")
        self.model.eval()
        items = pq.read_table(folder / "items.parquet")
        users = pq.read_table(folder / "users.parquet")
        self.item_index = {str(i): n for n, i in enumerate(items[ITEM_ID].to_pylist())}
        self.user_index = {
            str(u): int(i)
            for u, i in zip(users[USER_ID].to_pylist(), users["user_idx"].to_pylist(), strict=True)
        }
        flat = items["vector"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        vectors = np.asarray(flat, dtype=np.float32).reshape(items.num_rows, -1)
        profiles = UserProfiles(
            dict(zip(users["user_idx"].to_pylist(), users["profile"].to_pylist(), strict=True))
        )
        texts = ItemTexts(items["title"].to_pylist(), items["genres"].to_pylist())
        self.builder = PromptBuilder(texts, profiles, vectors, self.prompt, s["retriever_pool"], tokenizer)
        tables = np.load(folder / "conventional.npz")
        self.user_rows, self.history_rows = tables[USER_TABLE], tables[HISTORY_TABLE]
        self.retriever = bool(s["retriever"])
        self.long_history = int(s["long_history"])

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Score ``B`` requests (columns in the module docstring); returns ``{"score": [B]}`` in (0, 1)."""
        for column in (USER_ID, ITEM_ID, HISTORY):
            if column not in model_input.columns:
                raise InputError(
                    f"reclora pyfunc input: column {column!r} missing; found {list(model_input.columns)}. "
                    "Example row: {'user_id': '196', 'item_id': '242', 'history': ['302', '377']}."
                )
        rows = len(model_input)
        users = np.array(
            [self.user_index.get(str(u), OOV_INDEX) for u in model_input[USER_ID]], dtype=np.int64
        )
        targets = np.array(
            [self.item_index.get(str(i), OOV_INDEX) for i in model_input[ITEM_ID]], dtype=np.int64
        )
        histories = [list(h) if h is not None else [] for h in model_input[HISTORY]]
        ratings_col = model_input[HISTORY_RATINGS] if HISTORY_RATINGS in model_input.columns else None
        lengths = np.array([len(h) for h in histories], dtype=np.int64)
        owners = np.repeat(np.arange(rows, dtype=np.int64), lengths)
        positions = np.concatenate([np.arange(n) for n in lengths]) if rows else np.zeros(0, dtype=np.int64)
        items = np.array(
            [self.item_index.get(str(i), OOV_INDEX) for h in histories for i in h], dtype=np.int64
        )
        if ratings_col is not None:
            ratings = np.array(
                [float(r) for h in ratings_col for r in (h if h is not None else [])], dtype=np.float64
            )
            if ratings.shape != items.shape:
                raise InputError(
                    "reclora pyfunc input: history_ratings must have one rating per history item."
                )
        else:
            ratings = np.full(items.shape, np.nan)
        # One "user" per request row; positions as timestamps keep the given order; the request comes after.
        log = EventLog(owners, items, positions.astype(np.int64), ratings)
        rows_index = np.arange(rows, dtype=np.int64)
        start, end = log.earlier(rows_index, lengths)
        prompts = self.builder.build(log, users, targets, start, end, self.retriever)
        long_items = long_history_items(log, rows_index, lengths, self.long_history)
        vectors = user_vectors(self.user_rows, self.history_rows, users, long_items)
        data = LMData(prompts, torch.zeros(rows), torch.from_numpy(vectors))
        scores = score_lm(self.model, data, _PREDICT_BATCH, description="reclora pyfunc")
        return pd.DataFrame({SCORE: scores})


def log_reclora(
    model: RecLoRAModel,
    rcfg: RecLoRAConfig,
    conventional: Conventional,
    builder: PromptBuilder,
    backbone_folder: Path,
    retriever: bool,
    item_ids: list[str],
    user_ids: dict[int, str],
    example: pd.DataFrame,
) -> ModelInfo:
    """Log the scorer pyfunc (artifacts, signature, input example) into the active MLflow run."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / ARTIFACT
        save_reclora_artifacts(
            folder, model, rcfg, conventional, builder, backbone_folder, retriever, item_ids, user_ids
        )
        return log_pyfunc(
            MODEL_NAME, RecLoRAScorer, {ARTIFACT: str(folder)}, example, requires=SERVING_MODULES
        )


def example_requests(
    log: EventLog,
    users: np.ndarray,
    targets: np.ndarray,
    timestamps: np.ndarray,
    item_ids: list[str],
    user_ids: dict[int, str],
) -> pd.DataFrame:
    """Pyfunc requests for CTR samples: raw ids, the history strictly before each timestamp (oldest first)."""
    start, end = log.earlier(users, timestamps)
    return pd.DataFrame(
        {
            USER_ID: [user_ids.get(int(u), "") for u in users],
            ITEM_ID: [item_ids[int(t)] for t in targets],
            HISTORY: [[item_ids[int(i)] for i in log.items[s:e]] for s, e in zip(start, end, strict=True)],
            HISTORY_RATINGS: [[float(r) for r in log.ratings[s:e]] for s, e in zip(start, end, strict=True)],
        }
    )
