"""What every ``recsys bench <name>`` shares: benchmarks print a table and save JSON; speed is reported as a
ratio against a reference engine measured in the same run, because absolute seconds on shared machines mean
little. Which benchmarks exist is the command line's business (``recsys.cli``)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recsys.console import console, print_result, print_table


def machine_info() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def alternating_order(first: str, second: str, repeat: int) -> tuple[str, str]:
    """Which of two engines runs first in this repeat: alternating, so a machine that slows down (or warms
    up) over the run penalises both engines equally instead of always the second one."""
    return (first, second) if repeat % 2 == 0 else (second, first)


def save_results(out_dir: str | Path, name: str, results: Mapping[str, Any]) -> Path:
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{name}-{stamp}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"benchmark": name, "machine": machine_info(), **results}, indent=2) + "\n")
    tmp.replace(path)
    return path


def report_bench(name: str, reference: str, results: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Print a benchmark's results as tables and save them as JSON under ``out_dir``; returns the file."""
    rows = [
        (
            r["engine"],
            r["step"],
            f"{r['seconds']:.2f}",
            f"{r['samples_per_s']:.0f}" if "samples_per_s" in r else "",
            f"{r['ratio']:.3f}" if isinstance(r.get("ratio"), float) else r.get("ratio", ""),
        )
        for r in results["timings"]
    ]
    print_table(f"bench {name}", ["engine", "step", "seconds", "samples/s", f"ratio vs {reference}"], rows)
    if "indexes" in results:
        index_rows = [
            (
                r["name"],
                r["factory"],
                f"{r['build_seconds']:.1f}",
                f"{r['qps']:.0f}",
                f"{r['recall_at_k']:.4f}",
                f"{r['speedup_vs_exact']:.2f}x",
            )
            for r in results["indexes"]
        ]
        print_table("indexes", ["index", "factory", "build s", "QPS", "recall@k", "QPS vs exact"], index_rows)
    if "outputs_identical" in results:
        same = ", ".join(
            f"{k}={'identical' if v else 'DIFFERENT'}" for k, v in results["outputs_identical"].items()
        )
        console.print(f"outputs of both engines: {same}")
    for table in results.get("tables", []):
        print_table(table["title"], table["header"], table["rows"])
    path = save_results(out_dir, name, results)
    print_result(f"results: {path}")
    return path
