"""Training throughput of the DLRM ranker: our Lightning loop vs a plain TorchRec loop, on the same data.

Workload (both engines): a Criteo-like synthetic data set (``num_dense`` log1p dense features, ``num_sparse``
single-id categorical features, one table of ``rows_per_table`` rows each, 0/1 labels), built in memory
before timing. Both engines build the same sharded model (``shard_ranker``, table-wise, fused row-wise Adagrad
for the tables, Adam for the dense part) from the same seed and train it on the same batches (each engine its
own copy); only the steps after ``warmup_batches`` are timed. For each world size, one set of fresh processes
(``launch_local``, one per rank, sharing one gloo group) runs every repeat. Each rank trains on its own
batches, and rank 0's timing is reported.

How it is timed: the two loops run interleaved, one step each in turn, in the same processes. A repeat is one
Lightning ``Trainer.fit`` (``DLRMLitModule``, ``TorchRecStrategy``) with a callback that runs one step of the
plain loop (its own DMP, optimizers and batches) at every step boundary, and reads the clock just before and
just after that plain step. The plain step's time is the interval between those two reads; Lightning's is
the interval from the end of one plain step to the start of the next, which holds one whole Lightning step
and everything its loop does around it (data fetch, hooks, logging, the SIGTERM broadcast). The steps being
compared are milliseconds apart: on a virtual machine whose host steals CPU in bursts of seconds, separate
runs of the two loops moved by +-25% from one run to the next (a per-repeat spread of 0.79-1.27 in the
Lightning/plain ratio), while interleaved steps see the same machine. The repeats alternate where the plain
step sits, after each Lightning step (``on_train_batch_end``) or before its training step
(``on_train_batch_start``), so neither loop always runs on the caches the other just warmed.

Each repeat is summarised by each engine's median step; its ratio is the plain loop's median step over
Lightning's (Lightning samples/s over plain samples/s, 1.0 = no overhead), and the reported ratio is the
median over repeats. The plain sums of the step times (``wall_seconds``, ``ratio_wall``) are reported
beside it. Both engines run with ``model.malloc`` (``recsys.allocator``), as ``recsys train`` does; the
minor page faults per timed step of each engine are reported beside the times (``minor_faults_per_step``).
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from models.common.launch import launch_local
from models.dlrm.batch import CTRBatch
from models.dlrm.config import (
    DenseFeatures,
    DLRMBenchConfig,
    DLRMConfig,
    OptimConfig,
    ShardingConfig,
    TableSpec,
)
from models.dlrm.module import DLRMLitModule, dense_optimizer_factory
from models.dlrm.sharding import shard_ranker
from models.dlrm.strategy import GLOO, TorchRecStrategy
from recsys.allocator import MallocSettings, apply_malloc_settings, minor_page_faults
from recsys.bench import alternating_order
from recsys.config import compose, to_plain, typed

LIGHTNING, TORCHREC = "lightning", "torchrec"
"""Engine names in the results; TORCHREC (the plain loop) is the reference of every ratio."""
PLAIN_AFTER, PLAIN_BEFORE = "after", "before"
PLACEMENTS = (PLAIN_AFTER, PLAIN_BEFORE)
"""Where a repeat runs each plain step: after each Lightning step, or before each Lightning training step."""
MODEL_CONF = "dlrm_criteo"
"""Model conf (``conf/model/<name>.yaml``) whose arch hidden sizes, optimizer, SIGTERM broadcast interval and
malloc thresholds the bench uses, unless the composed ``model`` is a DLRM one (``model=dcn``, ...)."""
INTERACTION = "dot"
DCN_NUM_LAYERS, DCN_LOW_RANK_DIM = 3, 64
"""Unused with the dot interaction; a DLRMConfig states them."""
SHARDING_TYPES = ("table_wise",)
POOLING = "sum"

ModelState = dict[str, list[tuple[list[int], torch.Tensor]]]
"""``{state_dict key: [(global offsets, local tensor), ...]}``: a replicated tensor is one piece at 0."""


@dataclass(frozen=True)
class DLRMBenchSettings:
    """``conf/bench/dlrm.yaml`` plus the seed and the DLRM model's arch, optimizer and process settings.

    Attributes:
        batch_size: rows per batch and process.
        num_batches: timed batches per process.
        warmup_batches: batches run before timing starts.
        num_dense: dense features (``int_0`` ...).
        num_sparse: categorical features (``cat_0`` ...), one table each.
        rows_per_table: rows of every table.
        embedding_dim: width of every embedding.
        world_sizes: process counts measured.
        repeats: interleaved fits per world size (the median of their ratios is reported).
        seed: seed of the model weights and (offset by rank) of the synthetic batches.
        dense_hidden: dense arch hidden sizes before the final ``embedding_dim`` layer.
        over_arch: over arch sizes (ends with 1).
        optim: learning rates and Adagrad epsilon.
        sigterm_broadcast_every_n_steps: ``model.sigterm_broadcast_every_n_steps``, as ``recsys train``
            gives it to the Lightning engine's ``TorchRecStrategy``.
        malloc: ``model.malloc``, applied in every process of both engines (None = glibc's defaults).
    """

    batch_size: int
    num_batches: int
    warmup_batches: int
    num_dense: int
    num_sparse: int
    rows_per_table: int
    embedding_dim: int
    world_sizes: tuple[int, ...]
    repeats: int
    seed: int
    dense_hidden: tuple[int, ...]
    over_arch: tuple[int, ...]
    optim: OptimConfig
    sigterm_broadcast_every_n_steps: int
    malloc: MallocSettings | None

    @classmethod
    def of(cls, bench: DLRMBenchConfig, model: DLRMConfig, seed: int) -> DLRMBenchSettings:
        """The bench group, the seed, and the arch / optimizer / process settings of ``model``
        (:func:`bench_model`)."""
        return cls(
            batch_size=bench.batch_size,
            num_batches=bench.num_batches,
            warmup_batches=bench.warmup_batches,
            num_dense=bench.num_dense,
            num_sparse=bench.num_sparse,
            rows_per_table=bench.rows_per_table,
            embedding_dim=bench.embedding_dim,
            world_sizes=bench.world_sizes,
            repeats=bench.repeats,
            seed=seed,
            dense_hidden=model.dense_arch_layer_sizes[:-1],
            over_arch=model.over_arch_layer_sizes,
            optim=model.optim,
            sigterm_broadcast_every_n_steps=model.sigterm_broadcast_every_n_steps,
            malloc=model.malloc,
        )

    @property
    def total_batches(self) -> int:
        """Batches each process trains on: warm-up plus timed."""
        return self.warmup_batches + self.num_batches


def bench_model(cfg: Mapping[str, Any]) -> DLRMConfig:
    """The DLRM model conf the bench takes its arch and settings from: the composed ``model`` when it is a
    DLRM one (``recsys bench dlrm model=dcn model.malloc=null``), else ``conf/model/dlrm_criteo.yaml``."""
    model = cfg.get("model")
    if model is None or model.get("family") != "dlrm":
        model = to_plain(compose([f"model={MODEL_CONF}"]))["model"]
    return typed(DLRMConfig, model, "model")


def bench_model_config(settings: DLRMBenchSettings) -> tuple[DLRMConfig, dict[str, int]]:
    """The synthetic Criteo-like ``DLRMConfig`` and its manifest counts.

    Returns:
        ``(cfg, counts)``: tables ``t_cat_i`` looked up by feature ``cat_i`` and sized by ``num_cat_i``,
        dense features ``int_0`` ... (log1p), dot interaction, table-wise sharding;
        ``counts = {"num_cat_i": rows_per_table}``.
    """
    tables = tuple(
        TableSpec(f"t_cat_{i}", (f"cat_{i}",), f"num_cat_{i}", POOLING) for i in range(settings.num_sparse)
    )
    cfg = DLRMConfig(
        name="dlrm_bench",
        family="dlrm",
        interaction=INTERACTION,
        dcn_num_layers=DCN_NUM_LAYERS,
        dcn_low_rank_dim=DCN_LOW_RANK_DIM,
        objective="binary",
        ordinal_cuts=(),
        embedding_dim=settings.embedding_dim,
        dense_arch_layer_sizes=(*settings.dense_hidden, settings.embedding_dim),
        over_arch_layer_sizes=settings.over_arch,
        tables=tables,
        factorization_head=None,
        dense_features=DenseFeatures(log1p=tuple(f"int_{i}" for i in range(settings.num_dense)), identity=()),
        optim=settings.optim,
        shuffle_buffer_rows=None,
        batch_size=settings.batch_size,
        epochs=1,
        early_stopping_patience=None,
        sharding=ShardingConfig(sharding_types=SHARDING_TYPES, constraints={}, hbm_cap_gib=None),
    )
    counts = {table.size: settings.rows_per_table for table in tables}
    return cfg, counts


def make_batches(cfg: DLRMConfig, settings: DLRMBenchSettings, rank: int) -> list[CTRBatch]:
    """``settings.total_batches`` seeded synthetic batches for one rank (each rank gets its own).

    Dense values are ``log1p`` of exponential draws (non-negative, skewed, like Criteo's counts), every
    categorical feature has one uniform id per row, labels are fair coin flips.
    """
    generator = torch.Generator().manual_seed(settings.seed + rank)
    n_rows, n_dense, n_sparse = settings.batch_size, len(cfg.dense_features), len(cfg.sparse_features)
    batches = []
    for _ in range(settings.total_batches):
        dense = torch.log1p(torch.empty(n_rows, n_dense).exponential_(generator=generator))
        ids = torch.randint(0, settings.rows_per_table, (n_sparse * n_rows,), generator=generator)
        sparse = KeyedJaggedTensor.from_lengths_sync(
            keys=list(cfg.sparse_features),
            values=ids,
            lengths=torch.ones(n_sparse * n_rows, dtype=torch.int32),
        )
        labels = torch.randint(0, 2, (n_rows,), generator=generator).float()
        batches.append(CTRBatch(dense=dense, sparse=sparse, labels=labels))
    return batches


def _pass_through(batch: CTRBatch) -> CTRBatch:
    return batch


def batch_loader(batches: list[CTRBatch]) -> DataLoader[CTRBatch]:
    """Whole prebuilt batches, in order, through a ``DataLoader`` (what both engines read from)."""
    return DataLoader(
        batches,  # type: ignore[arg-type]
        batch_size=None,
        collate_fn=_pass_through,  # type: ignore[arg-type]
    )


class PlainLoop:
    """The reference engine: a hand-written TorchRec DMP training loop with the module's model and optimizers,
    reading its batches through a ``DataLoader`` as the Lightning loop does.

    Args:
        cfg: the bench model config.
        counts: its manifest counts.
        batches: the batches it trains on, in order (its own copy: the engines share no tensors).
        seed: seeds the weights (as ``InterleavedSteps.setup`` seeds the Lightning module's).
    """

    def __init__(
        self, cfg: DLRMConfig, counts: Mapping[str, int], batches: list[CTRBatch], seed: int
    ) -> None:
        torch.manual_seed(seed)
        self.model: DistributedModelParallel = shard_ranker(cfg, counts, torch.device("cpu")).model
        dense_params = dict(in_backward_optimizer_filter(self.model.named_parameters()))
        dense = KeyedOptimizerWrapper(dense_params, dense_optimizer_factory(cfg))
        self.optimizer = CombinedOptimizer([self.model.fused_optimizer, dense])
        self.batches = iter(batch_loader(batches))
        self.steps_done = 0
        self.model.train()

    def step(self, index: int) -> None:
        """Train on the next batch, which must be batch ``index`` (the engines stay in step)."""
        if index != self.steps_done:
            raise RuntimeError(f"plain loop asked for step {index} after {self.steps_done} steps.")
        batch = next(self.batches)
        loss = F.binary_cross_entropy_with_logits(self.model(batch), batch.labels)
        loss.backward()  # type: ignore[no-untyped-call]  # also updates the tables (fused row-wise Adagrad)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.steps_done += 1


class StepRunner(Protocol):
    """What ``InterleavedSteps`` drives: one training step on batch ``index`` (``PlainLoop``)."""

    def step(self, index: int) -> None: ...


class InterleavedSteps(pl.Callback):
    """Runs one plain-loop step at every Lightning step boundary and reads the clock around it.

    Also seeds the Lightning module's weights (``setup`` runs just before ``configure_model``) as the plain
    loop's were seeded.

    Args:
        plain: the reference loop.
        settings: bench settings (seed, warm-up).
        placement: ``PLAIN_AFTER`` (the plain step after each Lightning step) or ``PLAIN_BEFORE`` (before each
            Lightning training step).
    """

    def __init__(self, plain: StepRunner, settings: DLRMBenchSettings, placement: str) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"placement {placement!r}; choose one of {PLACEMENTS}.")
        self.plain = plain
        self.settings = settings
        self.placement = placement
        # (time, minor faults) just before and just after each plain step, in step order
        self.starts: list[tuple[float, int]] = []
        self.ends: list[tuple[float, int]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        torch.manual_seed(self.settings.seed)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.placement == PLAIN_BEFORE:
            self._plain_step(batch_idx)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.placement == PLAIN_AFTER:
            self._plain_step(batch_idx)

    def _plain_step(self, index: int) -> None:
        self.starts.append((time.perf_counter(), minor_page_faults()))
        self.plain.step(index)
        self.ends.append((time.perf_counter(), minor_page_faults()))

    def timed(self) -> dict[str, dict[str, Any]]:
        """``{engine: {"steps": [num_batches] seconds, "faults_per_step": mean minor faults}}``.

        Plain step i: from its start to its end. Lightning: from the end of plain step i - 1 to the start of
        plain step i, for the ``num_batches`` plain steps after the warm-up (each such interval holds exactly
        one Lightning step: step i, or with ``PLAIN_BEFORE`` step i - 1).
        """
        first = self.settings.warmup_batches
        timed = range(first, first + self.settings.num_batches)
        plain = [(self.ends[i][0] - self.starts[i][0], self.ends[i][1] - self.starts[i][1]) for i in timed]
        lightning = [
            (self.starts[i][0] - self.ends[i - 1][0], self.starts[i][1] - self.ends[i - 1][1]) for i in timed
        ]
        return {
            engine: {"steps": [s for s, _ in pairs], "faults_per_step": statistics.mean(f for _, f in pairs)}
            for engine, pairs in ((LIGHTNING, lightning), (TORCHREC, plain))
        }


def _interleaved_repeat(
    cfg: DLRMConfig,
    counts: Mapping[str, int],
    batches: tuple[list[CTRBatch], list[CTRBatch]],
    settings: DLRMBenchSettings,
    placement: str,
) -> tuple[dict[str, dict[str, Any]], dict[str, nn.Module]]:
    """One ``Trainer.fit`` with the plain loop interleaved: ``(InterleavedSteps.timed(), {engine: DMP})``."""
    lightning_batches, plain_batches = batches
    plain = PlainLoop(cfg, counts, plain_batches, settings.seed)
    steps = InterleavedSteps(plain, settings, placement)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=int(os.environ["WORLD_SIZE"]),
        strategy=TorchRecStrategy(sigterm_broadcast_every_n_steps=settings.sigterm_broadcast_every_n_steps),
        max_steps=settings.total_batches,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        # Each rank trains on its own batches, in order: no DistributedSampler (it would shuffle them).
        use_distributed_sampler=False,
        callbacks=[steps],
    )
    module = DLRMLitModule(cfg, counts)
    trainer.fit(module, batch_loader(lightning_batches))
    assert module.model is not None
    return steps.timed(), {LIGHTNING: module.model, TORCHREC: plain.model}


def local_state(model: nn.Module) -> ModelState:
    """This rank's part of ``model.state_dict()`` as plain tensors (see ``ModelState``); picklable."""
    state: ModelState = {}
    for key, value in model.state_dict().items():
        if hasattr(value, "local_shards"):
            state[key] = [
                (list(s.metadata.shard_offsets), s.tensor.detach().clone()) for s in value.local_shards()
            ]
        elif isinstance(value, torch.Tensor):
            state[key] = [([0] * value.dim(), value.detach().clone())]
    return state


def placement(repeat: int) -> str:
    """Where the plain step sits in this repeat: alternating (``recsys.bench.alternating_order``)."""
    return alternating_order(PLAIN_AFTER, PLAIN_BEFORE, repeat)[0]


def _worker(settings: DLRMBenchSettings, keep_state: bool) -> list[dict[str, Any]]:
    """One rank running every repeat: ``[{"placement", "engines": InterleavedSteps.timed(), "state":
    {engine: ModelState} or None}, ...]``."""
    world_size = int(os.environ["WORLD_SIZE"])
    apply_malloc_settings(settings.malloc)
    # Same threads for both engines: the cores split among the ranks (Lightning sets none under torchelastic).
    threads = max(1, (os.cpu_count() or 1) // world_size)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    cfg, counts = bench_model_config(settings)
    rank = int(os.environ["RANK"])
    batches = (make_batches(cfg, settings, rank), make_batches(cfg, settings, rank))
    # One group for every repeat: Lightning's strategy finds it initialised and uses it as it is.
    dist.init_process_group(backend=GLOO)
    runs: list[dict[str, Any]] = []
    try:
        for repeat in range(settings.repeats):
            where = placement(repeat)
            timed, models = _interleaved_repeat(cfg, counts, batches, settings, where)
            state = {engine: local_state(model) for engine, model in models.items()} if keep_state else None
            runs.append({"placement": where, "engines": timed, "state": state})
            del models
            gc.collect()  # this repeat's models and optimizer state go before the next one allocates
    finally:
        dist.destroy_process_group()
    return runs


def measure(
    world_size: int, settings: DLRMBenchSettings, keep_state: bool = False
) -> dict[int, list[dict[str, Any]]]:
    """Every repeat of the interleaved schedule in one set of ``world_size`` fresh processes.

    Returns:
        ``{rank: [{"placement", "engines": {engine: {"steps": that rank's ``num_batches`` step times in
        seconds, "faults_per_step": its minor page faults per timed step}}, "state": {engine: ModelState}
        or None}, ...]}``, one entry per repeat.
    """
    results: dict[int, list[dict[str, Any]]] = launch_local(_worker, world_size, settings, keep_state)
    return results


def run_dlrm_bench(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Samples/s of the Lightning loop and of the plain TorchRec loop for each ``bench.dlrm.world_sizes``.

    Args:
        cfg: the plain root config (``to_plain(compose(["bench=dlrm", ...]))``); reads ``bench``, ``seed`` and
            the model of :func:`bench_model`.

    Returns:
        ``{"params": workload, "timings": [row, ...], "ratios": {"<world size>": ratio},
        "ratios_per_repeat": {"<world size>": [ratio of each repeat]}}``. A row has ``engine``, ``step``,
        ``seconds`` (``num_batches`` x the median step of rank 0, median over repeats), ``samples_per_s``
        (rows of the timed batches of all ranks / ``seconds``), ``ratio`` (the median over repeats of the
        plain loop's median step over Lightning's), ``ratio_of_medians`` (the plain loop's ``seconds`` over
        this engine's), ``median_step_ms_per_repeat``, and the plain sums: ``wall_seconds`` (median over
        repeats), ``wall_seconds_per_repeat``, ``ratio_wall``, and ``minor_faults_per_step`` (rank 0, median
        over repeats).
    """
    bench = typed(DLRMBenchConfig, cfg["bench"], "bench")
    settings = DLRMBenchSettings.of(bench, bench_model(cfg), int(cfg["seed"]))
    timings: list[dict[str, Any]] = []
    ratios: dict[str, float] = {}
    repeat_ratios: dict[str, list[float]] = {}
    for world_size in settings.world_sizes:
        samples = settings.batch_size * settings.num_batches * world_size
        median_step: dict[str, list[float]] = {LIGHTNING: [], TORCHREC: []}
        wall: dict[str, list[float]] = {LIGHTNING: [], TORCHREC: []}
        faults: dict[str, list[float]] = {LIGHTNING: [], TORCHREC: []}
        for run in measure(world_size, settings)[0]:
            for engine, timed in run["engines"].items():
                median_step[engine].append(statistics.median(timed["steps"]))
                wall[engine].append(sum(timed["steps"]))
                faults[engine].append(timed["faults_per_step"])
        seconds = {e: settings.num_batches * statistics.median(v) for e, v in median_step.items()}
        wall_seconds = {e: statistics.median(v) for e, v in wall.items()}
        paired = [t / lt for lt, t in zip(median_step[LIGHTNING], median_step[TORCHREC], strict=True)]
        ratio = statistics.median(paired)
        ratios[str(world_size)] = ratio
        repeat_ratios[str(world_size)] = paired
        for engine in (LIGHTNING, TORCHREC):
            timings.append(
                {
                    "engine": engine,
                    "step": f"train {world_size} proc",
                    "seconds": seconds[engine],
                    "samples_per_s": samples / seconds[engine],
                    "ratio": ratio if engine == LIGHTNING else 1.0,
                    "ratio_of_medians": seconds[TORCHREC] / seconds[engine],
                    "median_step_ms_per_repeat": [1000 * v for v in median_step[engine]],
                    "wall_seconds": wall_seconds[engine],
                    "wall_seconds_per_repeat": wall[engine],
                    "ratio_wall": wall_seconds[TORCHREC] / wall_seconds[engine],
                    "minor_faults_per_step": statistics.median(faults[engine]),
                }
            )
    params = {**asdict(settings), "cpus": os.cpu_count(), "schedule": "interleaved"}
    params["optim"] = asdict(settings.optim)
    params["malloc"] = None if settings.malloc is None else asdict(settings.malloc)
    return {"params": params, "timings": timings, "ratios": ratios, "ratios_per_repeat": repeat_ratios}
