"""Two gloo processes on CPU: the planner spreads tables (the factorization head's too) over both ranks,
Lightning trains through ``TorchRecStrategy``, and a DCP checkpoint resumes in fresh processes to exactly the
saved state.

Processes are started by ``models.common.launch.launch_local`` (``elastic_launch``, file rendezvous), so
Lightning sees a torchelastic environment and starts no processes itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

from models.common.launch import launch_local
from models.dlrm.config import FactorizationHeadConfig
from models.dlrm.module import DLRMLitModule
from models.dlrm.sharding import table_ranks
from recsys.errors import InputError
from tests.models.test_dlrm_network import COUNTS, loader, make_batches, make_config, make_trainer

pytestmark = pytest.mark.slow

WORLD_SIZE = 2
TRAIN_STEPS = 4
EXTRA_STEPS = 2
TRAIN_SEED, EXTRA_SEED = 1, 99
# The factorization head's tables are sharded, checkpointed and resumed like the network's.
HEAD = FactorizationHeadConfig(features=("user_idx", "item_idx"), embedding_dim=4, l2=0.01)
TABLES = ("t_user", "t_item", "t_category", *HEAD.table_names)


def _local(value: Any) -> Any:
    """A picklable copy of a (possibly sharded) state: ShardedTensor -> (global size, [(offsets, tensor)])."""
    if isinstance(value, torch.Tensor) and hasattr(value, "local_shards"):
        shards = [(list(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in value.local_shards()]
        return ("sharded", list(value.size()), shards)
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _local(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_local(v) for v in value)
    return value


def _worker(phase: str, folder: str) -> dict[str, Any]:
    """One rank: train (phase "train") or resume from ``folder`` ("resume"), then EXTRA_STEPS manual steps."""
    rank = int(os.environ["RANK"])
    # Different initial weights in the resumed run prove the values come from the checkpoint.
    torch.manual_seed(0 if phase == "train" else 1000)
    cfg = make_config("dot", sharding_types=("table_wise",), factorization_head=HEAD)
    module = DLRMLitModule(cfg, COUNTS)
    trainer = make_trainer(TRAIN_STEPS, devices=WORLD_SIZE)
    batches = loader(make_batches(cfg, n=TRAIN_STEPS * WORLD_SIZE, seed=TRAIN_SEED))
    if phase == "train":
        trainer.fit(module, batches)
        trainer.save_checkpoint(folder)
    else:
        trainer.fit(module, batches, ckpt_path=folder)
    assert module.model is not None and module.plan is not None
    optimizer = trainer.strategy.optimizers[0]
    state = {"model": _local(module.state_dict()), "optimizer": _local(optimizer.state_dict())}
    losses = []
    module.train()
    for batch in make_batches(cfg, n=EXTRA_STEPS, seed=EXTRA_SEED + rank):
        optimizer.zero_grad()
        loss, _ = module.compute_loss(batch)
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    return {
        "plan": table_ranks(module.plan),
        "global_step": trainer.global_step,
        "state": state,
        "losses": losses,
    }


def _full_tables(per_rank: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Assemble every sharded entry from the shards of all ranks; fail if any element is not covered."""
    tables: dict[str, torch.Tensor] = {}
    covered: dict[str, torch.Tensor] = {}
    for state in per_rank:
        for key, value in state.items():
            if not (isinstance(value, tuple) and value and value[0] == "sharded"):
                continue
            _, size, shards = value
            tables.setdefault(key, torch.zeros(size))
            covered.setdefault(key, torch.zeros(size, dtype=torch.bool))
            for offsets, tensor in shards:
                index = tuple(slice(o, o + s) for o, s in zip(offsets, tensor.shape, strict=True))
                tables[key][index] = tensor
                covered[key][index] = True
    for key, mask in covered.items():
        assert mask.all(), f"{key}: some rows are on no rank"
    return tables


def _dense(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _flatten_optimizer(state: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{param}/{name}": value for param, entry in state["state"].items() for name, value in entry.items()
    }


def _fails_on_rank_one() -> int:
    if os.environ["RANK"] == "1":
        raise InputError("features/ctr: rank 1 found no rows")
    return 0


def test_a_user_error_on_one_rank_reaches_the_launcher_as_itself() -> None:
    # One line for the user (the CLI prints RecsysErrors as such), not a ChildFailedError wall.
    with pytest.raises(InputError, match="rank 1 found no rows"):
        launch_local(_fails_on_rank_one, WORLD_SIZE)


def test_two_process_sharded_training_resumes_exactly_from_dcp(tmp_path: Path) -> None:
    folder = str(tmp_path / "ckpt")
    trained = launch_local(_worker, WORLD_SIZE, "train", folder)
    resumed = launch_local(_worker, WORLD_SIZE, "resume", folder)
    ranks = sorted(trained)
    assert ranks == [0, 1]

    # The planner spread the seven tables over both ranks (table-wise: each table lives on one rank).
    plan = trained[0]["plan"]
    assert set(plan) == set(TABLES)
    assert {r for table_ranks_ in plan.values() for r in table_ranks_} == {0, 1}
    assert all(result["plan"] == plan for result in [*trained.values(), *resumed.values()])
    assert all(result["global_step"] == TRAIN_STEPS for result in [*trained.values(), *resumed.values()])

    # Every table (and each row-wise Adagrad accumulator), gathered from both ranks, is exactly as saved.
    for part, flatten in (("model", dict), ("optimizer", _flatten_optimizer)):
        before = _full_tables([flatten(trained[r]["state"][part]) for r in ranks])
        after = _full_tables([flatten(resumed[r]["state"][part]) for r in ranks])
        assert before.keys() == after.keys()
        assert len(before) == len(TABLES)
        for key, value in before.items():
            torch.testing.assert_close(after[key], value, rtol=0, atol=0, msg=key)

    # Dense weights and Adam moments are replicated and identical too.
    for r in ranks:
        for key, value in _dense(trained[r]["state"]["model"]).items():
            torch.testing.assert_close(resumed[r]["state"]["model"][key], value, rtol=0, atol=0)
        before_opt = _dense(_flatten_optimizer(trained[r]["state"]["optimizer"]))
        after_opt = _dense(_flatten_optimizer(resumed[r]["state"]["optimizer"]))
        assert before_opt.keys() == after_opt.keys() and before_opt
        for key, value in before_opt.items():
            torch.testing.assert_close(after_opt[key], value, rtol=0, atol=0, msg=key)

    # Training on after the resume is the same as training on without it: identical losses for the next
    # steps (the second one depends on the restored optimizer state too).
    for r in ranks:
        assert resumed[r]["losses"] == trained[r]["losses"]
