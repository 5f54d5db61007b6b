"""The MovieLens DLRM table mapping adapted to the synthetic generator's users (one `segment` attribute)."""

from __future__ import annotations

from typing import Any

# Tables of conf/model/dlrm.yaml fed by MovieLens user attributes the synthetic data does not have.
MOVIELENS_USER_TABLES = ("t_gender", "t_occupation", "t_age", "t_zip_code")
SEGMENT_TABLE = {"name": "t_segment", "features": ["segment_idx"], "size": "num_segment", "pooling": "sum"}


def synthetic_tables(tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [*(t for t in tables if t["name"] not in MOVIELENS_USER_TABLES), dict(SEGMENT_TABLE)]
