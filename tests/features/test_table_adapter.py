"""``format: table`` (conf/data/csv.yaml): your own exports as they come, mapped by column name, through the
real ingest job; implausible timestamps for the declared unit stop it with the unit that fits."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession

from recsys.errors import InputError, ValidationError
from tests.helpers.runs import ingest, rows

# 2024-03-01 00:00:00 UTC and a few later events, in seconds.
T0 = 1_709_251_200
EVENTS = [("c1", "sku-1", 5, T0), ("c1", "sku-2", 3, T0 + 60), ("c2", "sku-1", 4, T0 + 120)]
TITLE_WITH_EVERYTHING = 'Café "Deluxe", 250g\nsecond line'


def _write(path: Path, text: str, encoding: str, newline: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _table_cfg(make_cfg: Any, folder: Path, *extra: str, **options: Any) -> dict[str, Any]:
    return make_cfg(
        "data=csv",
        f"data.path={folder}",
        "data.interactions=orders.csv",
        "data.columns.user_id=Customer ID",
        "data.columns.item_id=SKU",
        "data.columns.timestamp=Ordered At",
        "data.columns.rating=Stars",
        *extra,
        **options,
    )


@pytest.mark.parametrize(
    ("encoding", "newline", "delimiter"),
    [
        ("utf-8-sig", "\r\n", ","),  # a spreadsheet's "CSV UTF-8": byte-order mark, CRLF
        ("cp1252", "\n", ";"),  # a European spreadsheet: Windows-1252, semicolons
    ],
)
def test_spreadsheet_exports_read_as_written(
    spark: SparkSession, make_cfg: Any, tmp_path: Path, encoding: str, newline: str, delimiter: str
) -> None:
    d = delimiter
    orders = [f"Customer ID{d}SKU{d}Stars{d}Ordered At"]
    orders += [f"{u}{d}{i}{d}{r}{d}{t}" for u, i, r, t in EVENTS]
    items = [f"SKU{d}Name{d}Category", f"sku-1{d}{_quoted(TITLE_WITH_EVERYTHING)}{d}Food|Coffee"]
    items += [f"sku-2{d}Plain{d}Food"]
    folder = tmp_path / "export"
    _write(folder / "orders.csv", "\n".join(orders) + "\n", encoding, newline)
    _write(folder / "products.csv", "\n".join(items) + "\n", encoding, newline)
    java_charset = "utf-8" if encoding == "utf-8-sig" else encoding
    cfg = _table_cfg(
        make_cfg,
        folder,
        f"data.encoding={java_charset}",
        f"data.delimiter='{d}'",
        "+data.items={path: products.csv, item_id: SKU, title: Name, categories: Category}",
    )
    result = ingest(spark, cfg)
    published = rows(result.stage_dir / "interactions", ["timestamp"])
    assert [(r["user_id"], r["item_id"], r["rating"], r["timestamp"]) for r in published] == [
        (u, i, float(r), t) for u, i, r, t in EVENTS
    ]
    items_out = {r["item_id"]: r for r in rows(result.stage_dir / "items")}
    # Quotes, the delimiter, a doubled quote and a line break inside one field; the charset decoded.
    assert items_out["sku-1"]["title"].replace("\r\n", "\n") == TITLE_WITH_EVERYTHING
    assert items_out["sku-1"]["categories"] == ["Food", "Coffee"]
    assert items_out["sku-2"]["title"] == "Plain"
    assert rows(result.stage_dir / "quarantine") == []


def test_parquet_with_datetime_column_and_text_dates(
    spark: SparkSession, make_cfg: Any, tmp_path: Path
) -> None:
    folder = tmp_path / "warehouse"
    (folder / "events").mkdir(parents=True)
    when = [datetime.datetime.fromtimestamp(t, tz=datetime.UTC) for *_, t in EVENTS]
    table = pa.table(
        {
            "Customer ID": [u for u, *_ in EVENTS],
            "SKU": [i for _, i, *_ in EVENTS],
            "Stars": pa.array([r for _, _, r, _ in EVENTS], pa.int32()),
            "Ordered At": pa.array(when, pa.timestamp("us", tz="UTC")),
        }
    )
    pq.write_table(table, folder / "events" / "part-0.parquet")
    cfg = _table_cfg(
        make_cfg,
        folder,
        "data.file_format=parquet",
        "data.interactions=events",
        "data.timestamp_unit=datetime",
    )
    published = rows(ingest(spark, cfg).stage_dir / "interactions", ["timestamp"])
    assert [r["timestamp"] for r in published] == [t for *_, t in EVENTS]

    # The same events as text dates in a custom pattern.
    lines = ["Customer ID,SKU,Stars,Ordered At"]
    lines += [
        f"{u},{i},{r},{datetime.datetime.fromtimestamp(t, tz=datetime.UTC):%d/%m/%Y %H:%M}"
        for u, i, r, t in EVENTS
    ]
    _write(tmp_path / "text" / "orders.csv", "\n".join(lines) + "\n", "utf-8", "\n")
    cfg = _table_cfg(
        make_cfg,
        tmp_path / "text",
        "data.timestamp_unit=datetime",
        "data.timestamp_format='dd/MM/yyyy HH:mm'",
        root=tmp_path / "runs-text",
    )
    published = rows(ingest(spark, cfg).stage_dir / "interactions", ["timestamp"])
    assert [r["timestamp"] for r in published] == [t for *_, t in EVENTS]


def test_milliseconds_declared_as_seconds_stop_ingest_naming_the_unit(
    spark: SparkSession, make_cfg: Any, tmp_path: Path
) -> None:
    lines = ["Customer ID,SKU,Stars,Ordered At"] + [f"{u},{i},{r},{t * 1000}" for u, i, r, t in EVENTS]
    _write(tmp_path / "export" / "orders.csv", "\n".join(lines) + "\n", "utf-8", "\n")
    cfg = _table_cfg(make_cfg, tmp_path / "export")
    with pytest.raises(ValidationError, match=r"orders\.csv.*'timestamp'.*data\.timestamp_unit=ms") as error:
        ingest(spark, cfg)
    assert "2024-03-01" in str(error.value)  # where the timestamps land with the unit that fits
    assert not (tmp_path / "runs" / "1970-01-01" / "ingest").exists()  # nothing was published
    # With the unit the message names, the same file goes through.
    fixed = _table_cfg(make_cfg, tmp_path / "export", "data.timestamp_unit=ms")
    published = rows(ingest(spark, fixed).stage_dir / "interactions", ["timestamp"])
    assert [r["timestamp"] for r in published] == [t for *_, t in EVENTS]


def test_a_mapped_column_missing_from_the_file_is_named_with_close_matches(
    spark: SparkSession, make_cfg: Any, tmp_path: Path
) -> None:
    lines = ["Customer_ID,SKU,Stars,Ordered At"] + [f"{u},{i},{r},{t}" for u, i, r, t in EVENTS]
    _write(tmp_path / "export" / "orders.csv", "\n".join(lines) + "\n", "utf-8", "\n")
    with pytest.raises(
        InputError, match=r"orders\.csv: column 'Customer ID' \(data\.columns\.user_id\).*Customer_ID"
    ):
        ingest(spark, _table_cfg(make_cfg, tmp_path / "export"))
