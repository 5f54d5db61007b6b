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


def models_at_k(tables: dict[str, pd.DataFrame], metric: str, split: str, path: Path) -> Path:
    """Every evaluated model's ``metric`` over K in one chart (bucket ``all``): the cross-model comparison."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for model, table in tables.items():
        rows = table[(table["bucket"] == "all") & (table["metric"] == metric)].sort_values("k")
        if len(rows):
            ax.plot(rows["k"], rows["value"], marker="o", label=model)
    ax.set_xlabel("K")
    ax.set_ylabel(f"{metric}@K")
    ax.set_title(f"{metric}@K by model ({split})")
    ax.legend(fontsize=8)
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


def two_stage_bars(rows: dict[str, dict[str, float]], path: Path) -> Path:
    """Per two-stage stage: retrieval-only vs re-ranked NDCG@10 and recall@10, beside the candidates'
    recall@K (the most any re-ranking of those lists can reach), as grouped bars."""
    series = (
        ("retrieval NDCG@10", "two_stage/retrieval_ndcg_at_10"),
        ("re-ranked NDCG@10", "two_stage/reranked_ndcg_at_10"),
        ("retrieval recall@10", "two_stage/retrieval_recall_at_10"),
        ("re-ranked recall@10", "two_stage/reranked_recall_at_10"),
        ("candidate recall@K (ceiling)", "two_stage/candidate_recall"),
    )
    names = list(rows)
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 2.5 * len(names)), 4))
    for offset, (label, key) in enumerate(series):
        values = [rows[name].get(key, float("nan")) for name in names]
        positions = [i + (offset - (len(series) - 1) / 2) * width for i in range(len(names))]
        bars = ax.bar(positions, values, width=width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test value")
    ax.set_title("Two-stage: retrieval vs re-ranked (test)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
