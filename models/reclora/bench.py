"""Inference cost of personalized vs shared LoRA: ms per scored sample, same backbone, batch and prompts.

Both engines are :class:`RecLoRAModel` over the same frozen backbone folder, the same LoRA targets, rank and
alpha; the personalized one carries ``num_meta`` meta-LoRAs and the mixer (fed random user vectors of
``user_dim``), the shared one K = 1. Prompts are ``batch_size`` x ``seq_length`` random token ids from the
backbone's vocabulary (no padding), built once. Each engine is timed ``repeats`` times over
``num_batches`` forward passes after ``warmup_batches``, alternating which goes first; the median is
reported (one short window on a shared machine is noise). ``ratio`` = personalized ms / shared ms per sample
(wall clock); ``cpu_ratio`` the same from this process's CPU time, steadier when other jobs share the cores.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from typing import Any

import torch

from models.reclora.config import BackboneConfig, LoRAConfig, MixerConfig, RecLoRABenchSettings
from models.reclora.network import RecLoRAModel, load_backbone
from recsys.bench import alternating_order
from recsys.config import as_dict, typed

SHARED, PERSONALIZED = "shared", "personalized"
# Token ids below this are special / unused tokens in BERT-style vocabularies; random prompts avoid them.
_FIRST_WORD_ID = 1000


def _timed(
    model: RecLoRAModel, ids: torch.Tensor, users: torch.Tensor, batches: int, warmup: int
) -> tuple[float, float]:
    """``(wall seconds, process CPU seconds)`` of ``batches`` forward passes after ``warmup`` ones."""
    mask = torch.ones_like(ids)
    with torch.no_grad():
        for _ in range(warmup):
            model(ids, mask, users)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(batches):
            model(ids, mask, users)
    return time.perf_counter() - start, time.process_time() - cpu


def run_reclora_bench(cfg: Mapping[str, Any]) -> dict[str, Any]:
    b = typed(RecLoRABenchSettings, cfg["bench"], "bench")
    if b.num_threads:
        torch.set_num_threads(b.num_threads)
    backbone_cfg = BackboneConfig(b.backbone_path, "encoder", "mean", "yes", "no")
    lora = LoRAConfig(
        targets=b.targets, rank=b.rank, alpha=b.alpha, dropout=0.0, num_meta=b.num_meta, layers=b.layers
    )
    mixer = MixerConfig(b.mixer_hidden, 1.0)
    batch, length, user_dim = b.batch_size, b.seq_length, b.user_dim
    generator = torch.Generator().manual_seed(int(cfg["seed"]))
    models: dict[str, RecLoRAModel] = {}
    for engine, k in ((SHARED, 1), (PERSONALIZED, lora.num_meta)):
        backbone, _ = load_backbone(backbone_cfg)
        torch.manual_seed(int(cfg["seed"]))
        models[engine] = RecLoRAModel(backbone, "encoder", lora, k, user_dim=user_dim, mixer=mixer).eval()
    vocab = int(models[SHARED].backbone.config.vocab_size)
    ids = torch.randint(min(_FIRST_WORD_ID, vocab - 1), vocab, (batch, length), generator=generator)
    users = torch.randn(batch, user_dim, generator=generator)
    seconds: dict[str, list[float]] = {SHARED: [], PERSONALIZED: []}
    cpu_seconds: dict[str, list[float]] = {SHARED: [], PERSONALIZED: []}
    for repeat in range(b.repeats):
        for engine in alternating_order(SHARED, PERSONALIZED, repeat):
            wall, cpu = _timed(models[engine], ids, users, b.num_batches, b.warmup_batches)
            seconds[engine].append(wall)
            cpu_seconds[engine].append(cpu)
    samples = batch * b.num_batches
    median = {e: statistics.median(v) for e, v in seconds.items()}
    ms = {e: 1000.0 * s / samples for e, s in median.items()}
    ratio = ms[PERSONALIZED] / ms[SHARED]
    # CPU time of this process is much less disturbed by other processes on a shared machine than wall time.
    cpu_median = {e: statistics.median(v) for e, v in cpu_seconds.items()}
    cpu_ratio = cpu_median[PERSONALIZED] / cpu_median[SHARED]
    timings = [
        {
            "engine": engine,
            "step": f"score {samples} prompts x {length} tokens",
            "seconds": median[engine],
            "samples_per_s": samples / median[engine],
            "ms_per_sample": ms[engine],
            "cpu_ms_per_sample": 1000.0 * cpu_median[engine] / samples,
            **({"ratio": ratio} if engine == PERSONALIZED else {"ratio": 1.0}),
        }
        for engine in (SHARED, PERSONALIZED)
    ]
    # the bench settings as the yaml states them (less the option's name), plus the threads used
    params = {**{k: v for k, v in as_dict(b).items() if k != "name"}, "threads": torch.get_num_threads()}
    return {
        "params": params,
        "timings": timings,
        "ms_per_sample": ms,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "seconds_per_repeat": seconds,
        "cpu_seconds_per_repeat": cpu_seconds,
    }
