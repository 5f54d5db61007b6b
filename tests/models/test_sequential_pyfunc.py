"""The sequential retriever pyfunc round-trips through MLflow: the loaded model returns the same top-K as
the network's own user vector against its item vectors, with history items excluded; a history with no
known item gets the most popular items, flagged; a malformed request is a client error."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException

from models.sequential.network import MolarNet, SASRec, build_network
from models.sequential.pyfunc import load_network, log_sequential, save_model
from recsys.retrieval.index import IndexConfig, ItemIndex
from recsys.schema import FIRST_INDEX
from recsys.tracking.requests import FALLBACK, HISTORY, ITEM_IDS, SCORES
from tests.helpers.isolated import assert_carries_its_code, load_without_checkout
from tests.models.test_sequential_network import NUM_ITEMS, small_config

K = 4


def expected_top_k(
    network: SASRec | MolarNet, history: list[int], max_len: int
) -> tuple[list[int], np.ndarray]:
    """Top-K by ``user_vector(newest max_len items) . item_vector``, every history item excluded."""
    with torch.no_grad():
        query = network.user_vectors(torch.tensor([history[-max_len:]]))[0]
        scores = (network.item_vectors() @ query).numpy()
    scores[:FIRST_INDEX] = -np.inf
    scores[history] = -np.inf
    order = np.argsort(-scores, kind="stable")[:K]
    order = order[np.isfinite(scores[order])]  # fewer than K unseen items left
    return order.tolist(), scores[order]


@pytest.mark.parametrize("architecture", ["sasrec", "molar"])
def test_pyfunc_roundtrip_matches_the_network(tmp_path: Path, architecture: str) -> None:
    torch.manual_seed(3)
    cfg = small_config(architecture)
    content = None
    if architecture == "molar":
        content = (
            np.random.default_rng(0).normal(size=(NUM_ITEMS, 5)).astype(np.float32),
            np.ones(NUM_ITEMS, bool),
        )
    network = build_network(cfg, NUM_ITEMS, content).eval()
    model_dir = save_model(network, cfg, tmp_path / "model")
    _, reloaded = load_network(model_dir / "model_config.json", model_dir / "state_dict.pt")
    torch.testing.assert_close(reloaded.item_vectors(), network.item_vectors())

    item_ids = np.array(["<pad>", "<oov>", *(f"m{i}" for i in range(FIRST_INDEX, NUM_ITEMS))])
    rows = np.arange(FIRST_INDEX, NUM_ITEMS, dtype=np.int64)
    with torch.no_grad():
        vectors = network.item_vectors().numpy()[rows]
    index_cfg = IndexConfig(name="flat", factory="Flat", metric="inner_product")
    index_dir = ItemIndex.build(np.ascontiguousarray(vectors), rows, index_cfg, "test").save(
        tmp_path / "index"
    )

    # item 7 most popular, then 3, then 10; items never seen (0 events) are never offered
    popularity = np.zeros(NUM_ITEMS)
    popularity[[7, 3, 10, 4]] = [50.0, 40.0, 30.0, 20.0]
    popularity[:FIRST_INDEX] = 999.0  # reserved indices are never offered, whatever their count
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("seq", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = log_sequential(model_dir, index_dir, item_ids, popularity, K, ["m2", "m3"], "sequential")
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    # The same answers where the checkout cannot be imported: the model carries its code.
    isolated = load_without_checkout(info.model_uri, mlflow.get_tracking_uri(), tmp_path)
    assert_carries_its_code(isolated)
    assert isolated.answer["item_ids"] == loaded.predict(loaded.input_example)["item_ids"].tolist()

    # the second is longer than max_len (8) and leaves only one unseen item
    histories = [[5, 3, 7], [2, 9, 4, 11, 6, 8, 10, 3, 5]]
    request = [[str(item_ids[i]) for i in h] for h in histories]
    request[0].insert(1, "unknown-item")  # unknown ids are dropped
    answer = loaded.predict(pd.DataFrame({HISTORY: request}))
    for row, history in enumerate(histories):
        wanted, scores = expected_top_k(network, history, cfg.max_len)
        got = list(answer[ITEM_IDS].iloc[row])
        assert got == [str(item_ids[i]) for i in wanted] and len(got) == min(
            K, NUM_ITEMS - 2 - len(set(history))
        )
        assert {str(item_ids[i]) for i in history}.isdisjoint(got)
        np.testing.assert_allclose(answer[SCORES].iloc[row], scores, rtol=1e-4, atol=1e-5)
    assert answer[FALLBACK].tolist() == [False, False]

    cold = loaded.predict(pd.DataFrame({HISTORY: [[], ["unknown-item"], [str(item_ids[7])]]}))
    assert cold[FALLBACK].tolist() == [True, True, False]
    assert list(cold[ITEM_IDS].iloc[0]) == [str(item_ids[i]) for i in (7, 3, 10, 4)]
    assert list(cold[SCORES].iloc[0]) == [50.0, 40.0, 30.0, 20.0]
    assert list(cold[ITEM_IDS].iloc[1]) == list(cold[ITEM_IDS].iloc[0])

    for malformed in (pd.DataFrame({"items": [["m2"]]}), pd.DataFrame({HISTORY: ["m2"]})):
        with pytest.raises(MlflowException, match=HISTORY):
            loaded.predict(malformed)
    with pytest.raises(MlflowException, match=r"params\.k"):
        loaded.predict(pd.DataFrame({HISTORY: [["m2"]]}), params={"k": 0})
