"""PNG plots logged with every evaluation run (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

_RANKING = ("recall", "ndcg", "hit_rate", "precision", "mrr", "map")


def metric_at_k_curves(table: pd.DataFrame, title: str, path: Path) -> Path:
    """One line per ranking metric over K (bucket ``all``)."""
    overall = table[(table["bucket"] == "all") & (table["metric"].isin(_RANKING))]
    fig, ax = plt.subplots(figsize=(6, 4))
    for metric, rows in overall.groupby("metric"):
        rows = rows.sort_values("k")
        ax.plot(rows["k"], rows["value"], marker="o", label=str(metric))
    ax.set_xlabel("K")
    ax.set_ylabel("value")
    ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def popularity_vs_coverage(tables: dict[str, pd.DataFrame], k: int, path: Path) -> Path:
    """Each model as a point: catalog coverage@k against average recommendation popularity@k."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for model, table in tables.items():
        overall = table[(table["bucket"] == "all") & (table["k"] == k)].set_index("metric")["value"]
        if "coverage" in overall and "arp" in overall:
            ax.scatter(overall["arp"], overall["coverage"], s=60)
            ax.annotate(
                model, (overall["arp"], overall["coverage"]), textcoords="offset points", xytext=(5, 5)
            )
    ax.set_xlabel(f"average recommendation popularity @{k}")
    ax.set_ylabel(f"catalog coverage @{k}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
