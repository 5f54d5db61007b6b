"""One definition of every table the stages exchange, usable for Spark and for Arrow.

Raw ids are strings (`user_id`, `item_id`); the contiguous integer ids the models use are `user_idx` /
`item_idx`, so encoded and raw ids can never be joined by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

if TYPE_CHECKING:
    from pyspark.sql import types as T

# Canonical column names.
USER_ID = "user_id"
ITEM_ID = "item_id"
TIMESTAMP = "timestamp"
RATING = "rating"
LABEL = "label"
EVENT_TYPE = "event_type"
TITLE = "title"
TEXT = "text"
CATEGORIES = "categories"
IMAGE_PATH = "image_path"
USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
SPLIT = "split"
# Suffix of the optional precomputed content-vector columns of the items table (list<float>).
EMBEDDING_SUFFIX = "_embedding"

# Reserved vocabulary indices: every vocabulary starts real ids at FIRST_INDEX.
PADDING_INDEX = 0
OOV_INDEX = 1
FIRST_INDEX = 2

SPLITS = ("train", "valid", "test")

ColumnType = Literal["string", "long", "double", "int", "string_list", "double_list", "long_list"]

_ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "long": pa.int64(),
    "double": pa.float64(),
    "int": pa.int32(),
    "string_list": pa.list_(pa.string()),
    "double_list": pa.list_(pa.float64()),
    "long_list": pa.list_(pa.int64()),
}


@dataclass(frozen=True)
class Column:
    """A canonical column: its name, type and whether a row may leave it empty."""

    name: str
    type: ColumnType
    required: bool


@dataclass(frozen=True)
class TableSchema:
    """Ordered columns of one canonical table plus the key that must be unique."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]

    def column(self, name: str) -> Column:
        for col in self.columns:
            if col.name == name:
                return col
        raise KeyError(f"table {self.name!r} has no column {name!r}")

    def to_spark(self) -> T.StructType:
        # Imported here: served models read these schemas too, and their environments have no Spark.
        from pyspark.sql import types as T

        spark_types: dict[str, T.DataType] = {
            "string": T.StringType(),
            "long": T.LongType(),
            "double": T.DoubleType(),
            "int": T.IntegerType(),
            "string_list": T.ArrayType(T.StringType()),
            "double_list": T.ArrayType(T.DoubleType()),
            "long_list": T.ArrayType(T.LongType()),
        }
        return T.StructType(
            [T.StructField(c.name, spark_types[c.type], nullable=not c.required) for c in self.columns]
        )

    def to_arrow(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, _ARROW_TYPES[c.type], nullable=not c.required) for c in self.columns]
        )


INTERACTIONS = TableSchema(
    name="interactions",
    columns=(
        Column(USER_ID, "string", True),
        Column(ITEM_ID, "string", True),
        Column(TIMESTAMP, "long", True),
        Column(RATING, "double", False),
        Column(LABEL, "int", False),
        Column(EVENT_TYPE, "string", False),
    ),
    key=(USER_ID, ITEM_ID, TIMESTAMP),
)

ITEMS = TableSchema(
    name="items",
    columns=(
        Column(ITEM_ID, "string", True),
        Column(TITLE, "string", False),
        Column(TEXT, "string", False),
        Column(CATEGORIES, "string_list", False),
        Column(IMAGE_PATH, "string", False),
    ),
    key=(ITEM_ID,),
)

# Users carry free attribute columns after user_id; only the id is fixed.
USERS = TableSchema(name="users", columns=(Column(USER_ID, "string", True),), key=(USER_ID,))

# Criteo-style CTR events have no user/item/time: a label, dense integers and hashed categoricals.
CRITEO_DENSE_PREFIX = "int_"
CRITEO_SPARSE_PREFIX = "cat_"


def criteo_schema(num_dense: int, num_sparse: int) -> TableSchema:
    """Schema of a Criteo display-ads table: `label`, `int_0..int_{n-1}`, `cat_0..cat_{m-1}`."""
    dense = tuple(Column(f"{CRITEO_DENSE_PREFIX}{i}", "long", False) for i in range(num_dense))
    sparse = tuple(Column(f"{CRITEO_SPARSE_PREFIX}{i}", "string", False) for i in range(num_sparse))
    return TableSchema(name="ctr_events", columns=(Column(LABEL, "int", True), *dense, *sparse), key=())


_SPARK_NAMES: dict[pa.DataType, str] = {
    pa.int64(): "bigint",
    pa.int32(): "int",
    pa.string(): "string",
    pa.float32(): "float",
    pa.float64(): "double",
}


def spark_type_name(dtype: pa.DataType) -> str:
    """Spark simple type string of an Arrow type, as manifests record it (what Spark-written outputs carry,
    so readers check one vocabulary of types whoever wrote the output)."""
    if pa.types.is_list(dtype):
        return f"array<{spark_type_name(dtype.value_type)}>"
    return _SPARK_NAMES[dtype]
