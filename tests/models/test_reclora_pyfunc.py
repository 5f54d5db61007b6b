"""The registered RecLoRA pyfunc scores a raw request exactly like the offline ablation scores the sample."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from models.dlrm.network import DLRMRanker, build_embedding_bag_collection
from models.reclora.config import RecLoRAConfig
from models.reclora.conventional import Conventional
from models.reclora.fit import score_lm
from models.reclora.history import EventLog
from models.reclora.network import load_backbone
from models.reclora.prompts import ItemTexts, UserProfiles
from models.reclora.pyfunc import SCORE, example_requests, log_reclora
from models.reclora.samples import PromptBuilder, SampleSet, lm_data
from models.reclora.train import build_model
from recsys.config import compose, typed
from recsys.errors import InputError
from recsys.tracking.runs import configure
from tests.helpers.isolated import assert_carries_its_code, load_without_checkout
from tests.models.test_reclora_network import randomize_lora, save_tiny_bert

COUNTS = {
    "num_users": 5,
    "num_items": 16,
    "num_categories": 4,
    "num_gender": 4,
    "num_occupation": 4,
    "num_age": 4,
    "num_zip_code": 4,
}


@pytest.mark.parametrize("retriever", [True, False])
def test_pyfunc_roundtrip_matches_offline_scoring(tmp_path: Path, retriever: bool) -> None:
    folder = save_tiny_bert(tmp_path / "bert")
    overrides = [
        "model=reclora",
        f"model.backbone.path={folder}",
        "model.lora.num_meta=3",
        "model.lora.layers=[1]",
        "model.prompt.max_length=48",
        "model.prompt.short_history=2",
        "model.conventional.long_history=3",
    ]
    rcfg = typed(RecLoRAConfig, compose(overrides)["model"], "model")
    torch.manual_seed(0)
    ranker = DLRMRanker(
        rcfg.dlrm, build_embedding_bag_collection(rcfg.dlrm, COUNTS, torch.device("cpu"))
    ).eval()
    conventional = Conventional(rcfg.dlrm, COUNTS, ranker, tmp_path)
    events = pa.table(
        {
            "user_idx": [2, 2, 2, 2, 3, 3],
            "item_idx": [4, 5, 6, 7, 4, 8],
            "timestamp": [10, 20, 30, 40, 15, 25],
            "rating": [5.0, 2.0, 4.0, 1.0, 3.0, 5.0],
        }
    )
    log = EventLog.from_arrow(events, "events")
    titles = ["", ""] + [f"Movie {i}" for i in range(2, 16)]
    items = ItemTexts(titles, ["", ""] + ["Drama" if i % 2 else "Comedy" for i in range(2, 16)])
    profiles = UserProfiles({2: "gender F, age 30", 3: "gender M, age 52"})
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(16, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    _, tokenizer = load_backbone(rcfg.backbone, folder)
    builder = PromptBuilder(items, profiles, vectors, rcfg.prompt, None, tokenizer)
    model = build_model(
        rcfg, "personalized", user_dim=2 * rcfg.dlrm.embedding_dim, seed=0, backbone_folder=folder
    )
    randomize_lora(model, seed=2)
    users, targets, times = np.array([2, 2, 3, 4]), np.array([9, 10, 11, 12]), np.array([35, 45, 30, 5])
    samples = SampleSet(pa.table({}), users, targets, times, np.zeros(4, dtype=np.float32))
    offline = score_lm(model, lm_data(samples, log, builder, conventional, 3, retriever), batch_size=3)

    configure(
        {
            "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
            "experiment": "t",
            "artifact_root": str(tmp_path / "art"),
        }
    )
    item_ids = [""] * 2 + [f"m{i}" for i in range(2, 16)]
    user_ids = {2: "u2", 3: "u3", 4: "u4"}  # u4 has no history at all
    requests = example_requests(log, users, targets, times, item_ids, user_ids)
    assert requests.loc[0, "history"] == ["m4", "m5", "m6"] and requests.loc[3, "history"] == []
    with mlflow.start_run():
        info = log_reclora(
            model, rcfg, conventional, builder, folder, retriever, item_ids, user_ids, requests.head(2)
        )
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    served = loaded.predict(requests)[SCORE].to_numpy()
    assert np.allclose(served, offline, atol=1e-6)
    if retriever:  # once: loading the backbone in a second interpreter costs seconds
        isolated = load_without_checkout(
            info.model_uri, mlflow.get_tracking_uri(), tmp_path, requests.to_dict(orient="records")
        )
        assert_carries_its_code(isolated)
        assert np.allclose(isolated.answer[SCORE], offline, atol=1e-6)
    assert served.min() > 0.0 and served.max() < 1.0
    changed = requests.copy()
    changed["history"] = [["m7"], *requests["history"][1:]]
    changed["history_ratings"] = [[5.0], *requests["history_ratings"][1:]]
    assert abs(loaded.predict(changed)[SCORE].iloc[0] - served[0]) > 1e-6  # the history matters
    with pytest.raises(InputError, match="history"):
        loaded.unwrap_python_model().predict(None, pd.DataFrame({"user_id": ["u2"], "item_id": ["m9"]}))
