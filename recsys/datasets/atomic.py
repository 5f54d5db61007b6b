"""RecBole atomic files: ``<stem>.inter`` (+ ``.item``, ``.user``), tab-separated, ``name:type`` header.

This format opens the many datasets RecBole converted; the bundled default (MovieLens-100K) ships in it
inside the ``recbole`` wheel, installed without its dependencies because only the data is used.
"""

from __future__ import annotations

from importlib import util as importlib_util
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys.datasets.base import (
    PARSE_ERROR,
    RAW,
    SOURCE_FILE,
    DataConfig,
    RawDataset,
    RawTable,
    drop_line,
    first_line,
    read_lines,
    require_file,
    split_fields,
    tokens,
    with_missing,
)
from recsys.errors import InputError
from recsys.extras import INSTALL_HINTS
from recsys.schema import CATEGORIES, INTERACTIONS, ITEM_ID, ITEMS, TEXT, TITLE, USER_ID, USERS

SEQ_SUFFIX = "_seq"
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "rating", "label", "event_type")


def bundled_folder(spec: str) -> Path:
    """``recbole/ml-100k`` -> the ``dataset_example/ml-100k`` folder inside the installed recbole wheel."""
    package, _, dataset = spec.partition("/")
    found = importlib_util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise InputError(
            f"bundled dataset {spec!r} needs the {package!r} wheel: "
            f"{INSTALL_HINTS.get(package, f'pip install {package}')}, or pass data.path=DIR."
        )
    folder = Path(next(iter(found.submodule_search_locations))) / "dataset_example" / dataset
    if not folder.is_dir():
        raise InputError(f"{folder}: bundled dataset {spec!r} not found in the installed {package} package.")
    return folder


def parse_header(path: Path, encoding: str) -> list[tuple[str, str]]:
    """``user_id:token\\titem_id:token`` -> ``[("user_id", "token"), ("item_id", "token")]``."""
    header = first_line(path, encoding)
    fields: list[tuple[str, str]] = []
    for entry in header.split("\t"):
        name, sep, kind = entry.partition(":")
        if not sep or not name:
            raise InputError(
                f"{path}: header field {entry!r} is not `name:type` (RecBole atomic header); "
                f"header: {header!r}."
            )
        fields.append((name.strip(), kind.strip()))
    return fields


def _read_atomic(
    spark: SparkSession, path: Path, encoding: str, rename: dict[str, str]
) -> tuple[DataFrame, dict[str, str]]:
    """Split an atomic file into its (renamed) fields; returns the frame and ``canonical name -> type``."""
    header = parse_header(path, encoding)
    names = [rename.get(name, name) for name, _ in header]
    frame = drop_line(read_lines(spark, [path], encoding), first_line(path, encoding))
    return split_fields(frame, "\t", names), dict(zip(names, (k for _, k in header), strict=True))


def _require(path: Path, types: dict[str, str], columns: tuple[str, ...]) -> None:
    for column in columns:
        if column not in types:
            raise InputError(
                f"{path}: required column {column!r} missing; header has {sorted(types)} "
                f"(map other names with data.fields.<name>={column})."
            )


def _assembled_text(fields: list[str]) -> Column:
    """Leftover item fields become ``name: value`` sentences of the item text."""
    parts = [
        F.when(F.col(f).isNotNull() & (F.col(f) != ""), F.concat(F.lit(f"{f}: "), F.col(f))) for f in fields
    ]
    return F.concat_ws(". ", *parts) if parts else F.lit("")


def read(spark: SparkSession, cfg: DataConfig) -> RawDataset:
    if cfg.path:
        folder = cfg.require_path()
    else:
        bundled = cfg.options.get("bundled")
        if not bundled:
            raise InputError(f"data={cfg.name} needs a folder: pass data.path=DIR.")
        folder = bundled_folder(str(bundled))
    stem = str(cfg.options["stem"])
    rename = {str(k): str(v) for k, v in (cfg.options.get("fields") or {}).items()}
    tables: dict[str, RawTable] = {}

    inter_path = require_file(folder / f"{stem}.inter", "interaction file")
    inter, inter_types = _read_atomic(spark, inter_path, cfg.encoding, rename)
    _require(inter_path, inter_types, ("user_id", "item_id", "timestamp"))
    keep = [c for c in INTERACTION_COLUMNS if c in inter_types]
    inter = with_missing(inter.select(SOURCE_FILE, RAW, PARSE_ERROR, *keep), INTERACTIONS)
    tables["interactions"] = RawTable(INTERACTIONS, inter, (inter_path,))

    item_path = folder / f"{stem}.item"
    if item_path.exists():
        require_file(item_path, "item file")
        items, item_types = _read_atomic(spark, item_path, cfg.encoding, rename)
        _require(item_path, item_types, (ITEM_ID,))
        excluded = set(cfg.options.get("text_exclude") or ())
        leftovers = [n for n in item_types if n not in {ITEM_ID, TITLE, CATEGORIES, TEXT} | excluded]
        columns: list[Column | str] = [SOURCE_FILE, RAW, PARSE_ERROR, ITEM_ID]
        if TITLE in item_types:
            columns.append(TITLE)
        if CATEGORIES in item_types:
            # token_seq is space-separated; a plain token is a single category.
            sep = " " if item_types[CATEGORIES].endswith(SEQ_SUFFIX) else "\t"
            columns.append(tokens(CATEGORIES, sep).alias(CATEGORIES))
        base_text = [TEXT] if TEXT in item_types else []
        columns.append(_assembled_text(base_text + leftovers).alias(TEXT))
        tables["items"] = RawTable(ITEMS, with_missing(items.select(*columns), ITEMS), (item_path,))

    user_path = folder / f"{stem}.user"
    if user_path.exists():
        require_file(user_path, "user file")
        users, user_types = _read_atomic(spark, user_path, cfg.encoding, rename)
        _require(user_path, user_types, (USER_ID,))
        extra = tuple(n for n in user_types if n != USER_ID)
        tables["users"] = RawTable(USERS, users, (user_path,), extra)
    return RawDataset(tables)
