"""``recsys bench scaling``: how each stage of the daily pipeline grows with the data.

For every size (events, users, items) the benchmark generates seeded synthetic events (Zipf item
popularity, log-normal user activity, sessions, item content: ``recsys.datasets.synthetic``), then runs the
scaling pipeline (``conf/pipeline/scaling.yaml``: ingest, features, a baseline, a retriever with its FAISS
index and candidates, DLRM and SASRec for a fixed number of steps, each with its evaluation) as one
``recsys pipeline run`` process. Each stage's wall time, CPU time and peak memory come from its success
marker (the runner measures every stage's process tree, ``recsys.resources``); the benchmark itself watches
the whole tree and stops a size that outgrows the memory or time budget, naming the stage that was running.

Slopes are least-squares fits of log(seconds) and log(peak MiB) on log(events) over the sizes that finished:
a slope of 1 is linear growth, 2 quadratic.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.graph import PipelineSpec, parse_pipeline
from pipelines.markers import read_marker, started_path
from pipelines.runner import merge_overrides
from recsys.conditions import DISK_FULL, condition_in
from recsys.config import compose, to_plain
from recsys.console import console, step
from recsys.datasets import synthetic, synthetic_spec
from recsys.paths import RunPaths
from recsys.resources import MIB, ResourceMonitor, ResourceUsage
from recsys.settings import ScalingBenchSettings, ScalingSize, data_config
from recsys.structured import typed

GENERATE = "generate"
LOG_FILE = "pipeline.log"
# Lines of the pipeline's output kept in the JSON when a size fails (the error is the last of them).
_TAIL_LINES = 5


@dataclass
class SizeOutcome:
    """One size: the stages' costs, and why it stopped when it did not finish."""

    size: ScalingSize
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    completed: bool = False
    stopped_stage: str | None = None
    stopped_resource: str | None = None
    stopped_detail: str = ""
    total: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "label": self.size.label,
            "events": self.size.events,
            "users": self.size.users,
            "items": self.size.items,
            "completed": self.completed,
            "stages": self.stages,
            "pipeline": self.total,
        }
        if not self.completed:
            result["stopped"] = {
                "stage": self.stopped_stage,
                "resource": self.stopped_resource,
                "detail": self.stopped_detail,
            }
        return result


def user_overrides(settings: ScalingBenchSettings, size: ScalingSize, root: Path) -> list[str]:
    """What the benchmark passes to ``recsys pipeline run`` for one size."""
    return [
        # The pipeline's stages select data=synthetic; the command's root config must too, for the sizes.
        "data=synthetic",
        *settings.overrides,
        f"data.num_events={size.events}",
        f"data.num_users={size.users}",
        f"data.num_items={size.items}",
        f"paths.root={root}",
    ]


def pipeline_spec(settings: ScalingBenchSettings) -> PipelineSpec:
    return parse_pipeline(to_plain(compose([f"pipeline={settings.pipeline}"]))["pipeline"])


def _size_config(spec: PipelineSpec, overrides: Sequence[str]) -> dict[str, Any]:
    """The base config the pipeline runner composes at this size (its data and run folder)."""
    return to_plain(compose(merge_overrides(spec.overrides, overrides)))


def _generate(cfg: Mapping[str, Any], root: Path, interval_s: float) -> dict[str, float]:
    """Write the size's synthetic data where the ingest stage reads it, outside the measured stages."""
    data = data_config(cfg["data"])
    spec = synthetic_spec(data, int(cfg["seed"]))
    with ResourceMonitor(interval_s=interval_s) as monitor:
        synthetic.write(spec, Path(data.path) if data.path else synthetic.default_folder(root, spec))
    assert monitor.usage is not None
    return monitor.usage.as_dict()


def _running_stage(run_folder: Path, stages: Sequence[str]) -> str | None:
    """The stage that had started but not finished (its started marker is still there)."""
    for name in stages:
        if started_path(run_folder, name).is_file():
            return name
    return None


def _stopped_by(returncode: int, limit: str | None, tail: str) -> tuple[str, str]:
    """(resource, detail) of a failed size: the budget the monitor enforced, the kernel's OOM killer, or the
    stage's own error."""
    if limit is not None:
        return limit, tail
    if returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return "memory", f"killed by SIGKILL (the kernel's OOM killer?); {tail}"
    found = condition_in(tail)
    if found is not None and found[0] is DISK_FULL:
        return "disk", tail
    lowered = tail.lower()
    if "memoryerror" in lowered or "out of memory" in lowered or "java heap space" in lowered:
        return "memory", tail
    return "error", tail


def _run_size(
    settings: ScalingBenchSettings,
    size: ScalingSize,
    root: Path,
    overrides: Sequence[str],
    stages: Sequence[str],
    run_folder: Path,
) -> tuple[int, str | None, ResourceUsage]:
    """Run the pipeline for one size under the memory and time budgets; (exit code, budget hit, usage)."""
    exe = Path(sys.executable).parent / "recsys"
    command = [
        str(exe) if exe.is_file() else sys.executable,
        *([] if exe.is_file() else ["-m", "recsys.cli"]),
        "pipeline",
        "run",
        "--force",
        f"pipeline={settings.pipeline}",
        *overrides,
    ]
    log = root / LOG_FILE
    hit: list[str] = []
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        def stop(resource: str) -> None:
            if not hit:
                hit.append(resource)
                os.killpg(process.pid, signal.SIGKILL)

        limit_mb = settings.memory_limit_gb * 1024
        with ResourceMonitor(
            process.pid,
            interval_s=settings.sample_interval_s,
            limit_rss_mb=limit_mb,
            on_limit=lambda total: stop("memory"),
        ) as monitor:
            timer = threading.Timer(settings.time_limit_s, stop, args=("time",))
            timer.start()
            with console.status(
                f"{size.label} events: pipeline {settings.pipeline} (log: {log}) ..."
            ) as status:
                while process.poll() is None:
                    time.sleep(settings.sample_interval_s)
                    running = _running_stage(run_folder, stages)
                    if running is not None:
                        status.update(f"{size.label} events: stage {running} (log: {log}) ...")
            timer.cancel()
    assert monitor.usage is not None
    return process.returncode, (hit[0] if hit else None), monitor.usage


def _tail(path: Path) -> str:
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    failed = [line for line in lines if "failed:" in line or "Error" in line]
    return " | ".join((failed or lines)[-_TAIL_LINES:])


def measure_size(
    settings: ScalingBenchSettings, spec: PipelineSpec, size: ScalingSize, work: Path
) -> SizeOutcome:
    """Generate the size's data, run its pipeline and collect every stage's cost from the markers."""
    root = work / size.label
    root.mkdir(parents=True, exist_ok=True)
    overrides = user_overrides(settings, size, root)
    cfg = _size_config(spec, overrides)
    stages = [s.name for s in spec.stages]
    run_folder = RunPaths.from_cfg(cfg).run
    outcome = SizeOutcome(size)
    with step(f"{size.label} events: generate synthetic data"):
        outcome.stages[GENERATE] = _generate(cfg, root, settings.sample_interval_s)
    # A started marker left by an earlier, killed bench run would name the wrong stage as the running one.
    for name in stages:
        started_path(run_folder, name).unlink(missing_ok=True)
    start = datetime.now(UTC)
    returncode, limit, usage = _run_size(settings, size, root, overrides, stages, run_folder)
    outcome.total = usage.as_dict()
    for name in stages:
        marker = read_marker(run_folder, name)
        # Only this run's: a stage the run never reached keeps the marker of an earlier bench run.
        if marker is not None and datetime.fromisoformat(marker.started_at) >= start and marker.resources:
            outcome.stages[name] = dict(marker.resources)
    outcome.completed = returncode == 0 and limit is None and all(n in outcome.stages for n in stages)
    if not outcome.completed:
        outcome.stopped_stage = _running_stage(run_folder, stages) or next(
            (n for n in stages if n not in outcome.stages), None
        )
        if limit == "memory":
            detail = (
                f"process tree over bench.memory_limit_gb={settings.memory_limit_gb:g} "
                f"(peak {usage.peak_rss_mb / 1024:.1f} GiB)"
            )
        elif limit == "time":
            detail = f"still running after bench.time_limit_s={settings.time_limit_s:g}"
        else:
            detail = f"exit {returncode}: {_tail(root / LOG_FILE)}"
        outcome.stopped_resource, outcome.stopped_detail = _stopped_by(returncode, limit, detail)
    return outcome


def slope(events: Sequence[float], values: Sequence[float]) -> float | None:
    """Least-squares slope of log(value) on log(events); ``None`` with fewer than two usable points."""
    points = [(math.log(e), math.log(v)) for e, v in zip(events, values, strict=True) if v > 0]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / spread


def stage_slopes(
    outcomes: Sequence[SizeOutcome], stages: Sequence[str]
) -> dict[str, dict[str, float | None]]:
    result = {}
    for name in stages:
        done = [o for o in outcomes if name in o.stages]
        events = [float(o.size.events) for o in done]
        result[name] = {
            "sizes": len(done),
            "time": slope(events, [o.stages[name]["wall_s"] for o in done]),
            "cpu": slope(events, [o.stages[name]["cpu_s"] for o in done]),
            "memory": slope(events, [o.stages[name]["peak_rss_mb"] for o in done]),
        }
    return result


def plot(outcomes: Sequence[SizeOutcome], stages: Sequence[str], path: Path) -> Path | None:
    """Log-log time and peak memory against events, one line per stage; ``None`` with under two sizes."""
    if sum(1 for o in outcomes if o.stages) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(12, 5))
    for name in stages:
        done = [o for o in outcomes if name in o.stages]
        if not done:
            continue
        events = [o.size.events for o in done]
        time_axis.plot(events, [o.stages[name]["wall_s"] for o in done], marker="o", label=name)
        memory_axis.plot(events, [o.stages[name]["peak_rss_mb"] / 1024 for o in done], marker="o", label=name)
    for axis, label in ((time_axis, "wall time (s)"), (memory_axis, "peak resident memory (GiB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("events")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    time_axis.legend(fontsize="small")
    figure.suptitle("recsys bench scaling: stage cost against events")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    tmp.replace(path)
    return path


def _timings(outcomes: Sequence[SizeOutcome], stages: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of the common bench table: seconds per stage and size, ratio against the smallest size."""
    rows = []
    for name in [GENERATE, *stages]:
        reference = next((o.stages[name]["wall_s"] for o in outcomes if name in o.stages), None)
        for o in outcomes:
            if name not in o.stages:
                continue
            seconds = o.stages[name]["wall_s"]
            rows.append(
                {
                    "engine": f"{o.size.label} events",
                    "step": name,
                    "seconds": seconds,
                    "samples_per_s": o.size.events / seconds if seconds > 0 else 0.0,
                    "ratio": round(seconds / reference, 2) if reference else "",
                }
            )
    return rows


def _tables(
    outcomes: Sequence[SizeOutcome], stages: Sequence[str], slopes: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    labels = [o.size.label for o in outcomes]

    def cell(o: SizeOutcome, name: str, key: str, scale: float, fmt: str) -> str:
        return format(o.stages[name][key] / scale, fmt) if name in o.stages else "-"

    memory = [[name, *(cell(o, name, "peak_rss_mb", 1024, ".2f") for o in outcomes)] for name in stages]
    cpu = [[name, *(cell(o, name, "cpu_s", 1, ".0f") for o in outcomes)] for name in stages]

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    slope_rows = [
        [n, str(s["sizes"]), fmt(s["time"]), fmt(s["cpu"]), fmt(s["memory"])] for n, s in slopes.items()
    ]
    stopped = [
        [o.size.label, str(o.stopped_stage), str(o.stopped_resource), o.stopped_detail]
        for o in outcomes
        if not o.completed
    ]
    tables = [
        {
            "title": "peak resident memory (GiB, driver + workers)",
            "header": ["stage", *labels],
            "rows": memory,
        },
        {"title": "CPU seconds (all processes)", "header": ["stage", *labels], "rows": cpu},
        {
            "title": "log-log slopes against events",
            "header": ["stage", "sizes", "time", "CPU", "memory"],
            "rows": slope_rows,
        },
    ]
    if stopped:
        tables.append(
            {
                "title": "sizes that did not finish",
                "header": ["size", "stage", "resource", "detail"],
                "rows": stopped,
            }
        )
    return tables


def run_scaling_bench(cfg: Mapping[str, Any]) -> dict[str, Any]:
    settings = typed(ScalingBenchSettings, cfg["bench"], "bench")
    work = Path(settings.work_dir) if settings.work_dir else Path(cfg["paths"]["root"]) / "_bench" / "scaling"
    spec = pipeline_spec(settings)
    stages = [s.name for s in spec.stages]
    outcomes: list[SizeOutcome] = []
    for size in settings.sizes:
        outcome = measure_size(settings, spec, size, work)
        outcomes.append(outcome)
        if not outcome.completed:
            console.print(
                f"[red]{size.label} events stopped[/red] in stage {outcome.stopped_stage}: "
                f"{outcome.stopped_resource} ({outcome.stopped_detail}); larger sizes are not tried.",
                soft_wrap=True,
            )
            break
    slopes = stage_slopes(outcomes, stages)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    figure = plot(outcomes, stages, Path(settings.out_dir) / f"scaling-{stamp}.png")
    return {
        "params": {
            "pipeline": settings.pipeline,
            "overrides": list(settings.overrides),
            "memory_limit_gb": settings.memory_limit_gb,
            "time_limit_s": settings.time_limit_s,
            "machine_memory_gib": round(_machine_memory_mb() / 1024, 1),
        },
        "sizes": [o.as_dict() for o in outcomes],
        "slopes": slopes,
        "plot": str(figure) if figure else None,
        "timings": _timings(outcomes, stages),
        "tables": _tables(outcomes, stages, slopes),
    }


def _machine_memory_mb() -> float:
    import psutil

    return float(psutil.virtual_memory().total / MIB)
