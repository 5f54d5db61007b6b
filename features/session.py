"""The SparkSession every job uses, built from ``conf/spark/*.yaml``."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from pyspark.sql import SparkSession


def build_session(spark_cfg: Mapping[str, Any]) -> SparkSession:
    """Start (or reuse) a session. Workers run the driver's interpreter so they see the same packages."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(str(spark_cfg["master"]))
        .appName(str(spark_cfg["app_name"]))
        .config("spark.sql.shuffle.partitions", str(spark_cfg["shuffle_partitions"]))
        .config("spark.driver.memory", str(spark_cfg["driver_memory"]))
        # Every charset Java decodes (data.encoding: cp1252 from Windows spreadsheets), not Spark 4's list.
        .config("spark.sql.legacy.javaCharsets", "true")
    )
    if spark_cfg["local_dir"]:
        builder = builder.config("spark.local.dir", str(spark_cfg["local_dir"]))
    for key, value in spark_cfg["extra"].items():
        builder = builder.config(str(key), str(value))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session
