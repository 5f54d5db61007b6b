"""Input adapters: each turns one raw format into :class:`~recsys.datasets.base.RawDataset`.

``data.format`` picks the adapter. Validation and typing happen afterwards, in ``features.validate``.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from recsys.datasets import amazon, atomic, criteo, movielens, parquet_files, synthetic, tabular
from recsys.datasets.base import Adapter, DataConfig, RawDataset, RawTable
from recsys.errors import ConfigError

ADAPTERS: dict[str, Adapter] = {
    "atomic": atomic.read,
    "movielens_100k_raw": movielens.read_100k,
    "movielens_dat": movielens.read_dat,
    "movielens_csv": movielens.read_csv,
    "amazon2023": amazon.read,
    "criteo": criteo.read,
    "parquet": parquet_files.read,
    "table": tabular.read,
}


def synthetic_spec(cfg: DataConfig, seed: int) -> synthetic.SyntheticSpec:
    o = cfg.options
    return synthetic.SyntheticSpec(
        num_users=int(o["num_users"]),
        num_items=int(o["num_items"]),
        num_events=int(o["num_events"]),
        seed=seed,
        zipf_exponent=float(o["zipf_exponent"]),
        mean_session_length=float(o["mean_session_length"]),
        num_categories=int(o["num_categories"]),
        rated_fraction=float(o["rated_fraction"]),
    )


def read_dataset(spark: SparkSession, cfg: DataConfig, root: Path, seed: int) -> RawDataset:
    """Open the configured input; ``root`` and ``seed`` only matter for generated (synthetic) data."""
    if cfg.format == "synthetic":
        spec = synthetic_spec(cfg, seed)
        folder = Path(cfg.path) if cfg.path else synthetic.default_folder(root, spec)
        return parquet_files.read_folder(spark, synthetic.write(spec, folder))
    adapter = ADAPTERS.get(cfg.format)
    if adapter is None:
        raise ConfigError(
            f"data.format={cfg.format!r} is unknown; choose one of {sorted([*ADAPTERS, 'synthetic'])}."
        )
    return adapter(spark, cfg)


__all__ = ["ADAPTERS", "DataConfig", "RawDataset", "RawTable", "read_dataset"]
