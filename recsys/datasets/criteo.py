"""Criteo display-ads TSV: ``label``, 13 integer features, 26 hashed categorical features, no header.

Empty fields are legitimate missing values in this dataset; only structure, integer syntax and the label
are validated.
"""

from __future__ import annotations

from pathlib import Path

from pyspark.sql import SparkSession

from recsys.datasets.base import (
    DataConfig,
    RawDataset,
    RawTable,
    blank_to_null,
    read_lines,
    require_file,
    split_fields,
)
from recsys.errors import InputError
from recsys.schema import CRITEO_DENSE_PREFIX, CRITEO_SPARSE_PREFIX, LABEL, criteo_schema


def read(spark: SparkSession, cfg: DataConfig) -> RawDataset:
    pattern = str(cfg.options["glob"])
    if cfg.path and Path(cfg.path).is_file():
        files = [Path(cfg.path)]
    else:
        folder = cfg.require_path()
        files = sorted(p for p in folder.glob(pattern) if p.is_file())
        if not files:
            raise InputError(f"{folder}: no Criteo file matches data.glob={pattern!r}.")
    for path in files:
        require_file(path, "Criteo file")
    num_dense = int(cfg.options["num_dense"])
    num_sparse = int(cfg.options["num_sparse"])
    schema = criteo_schema(num_dense, num_sparse)
    frame = split_fields(read_lines(spark, files, cfg.encoding), "\t", schema.names)
    for name in schema.names:
        if name.startswith((CRITEO_DENSE_PREFIX, CRITEO_SPARSE_PREFIX)):
            frame = frame.withColumn(name, blank_to_null(name))
    assert schema.names[0] == LABEL
    return RawDataset({"ctr_events": RawTable(schema, frame, tuple(files))})
