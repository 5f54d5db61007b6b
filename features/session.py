"""The SparkSession every job uses, built from ``conf/spark/*.yaml``."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from typing import Any

from pyspark.sql import SparkSession

from recsys.config import conf_dir

LOG4J_CONFIG = "log4j2.properties"


def build_session(spark_cfg: Mapping[str, Any]) -> SparkSession:
    """Start (or reuse) a session. Workers run the driver's interpreter so they see the same packages.

    The JVM logs errors only (``conf/spark/log4j2.properties``), and a local session binds to the loopback
    address, so a command prints no Spark startup noise."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    master = str(spark_cfg["master"])
    if master.startswith("local"):
        # Else Spark warns on every start that the hostname resolves to a loopback address.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    log_config = conf_dir() / "spark" / LOG4J_CONFIG
    builder = (
        SparkSession.builder.master(master)
        .appName(str(spark_cfg["app_name"]))
        .config("spark.sql.shuffle.partitions", str(spark_cfg["shuffle_partitions"]))
        .config("spark.driver.memory", str(spark_cfg["driver_memory"]))
        # Every charset Java decodes (data.encoding: cp1252 from Windows spreadsheets), not Spark 4's list.
        .config("spark.sql.legacy.javaCharsets", "true")
        .config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={log_config.as_uri()}")
    )
    if spark_cfg["local_dir"]:
        builder = builder.config("spark.local.dir", str(spark_cfg["local_dir"]))
    for key, value in spark_cfg["extra"].items():
        builder = builder.config(str(key), str(value))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session
