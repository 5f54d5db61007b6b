"""The features stage: validated canonical tables -> vocabularies, splits, sequences, CTR samples, content.

Every output is written into the stage's staging folder and read back from Parquet before the next job
uses it, so each job starts from the published file, not from a long Spark lineage. The stage is renamed
into place only when all outputs and manifests are complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from features.content import CATEGORY_IDX, build_content
from features.ctr import CTRConfig, build_ctr_samples
from features.io import read_output, read_parquet, write_output
from features.sequences import build_sequences, item_popularity
from features.split import SplitConfig, assign_splits, split_temporal
from features.vocab import (
    CATEGORY_VOCAB,
    FIRST_SEEN,
    ITEM_VOCAB,
    USER_VOCAB,
    VocabSpec,
    attribute_vocab,
    encode,
    encode_list,
    extend_vocabulary,
    vocabulary_size,
)
from recsys.errors import ConfigError, InputError
from recsys.manifest import (
    Manifest,
    config_hash,
    fingerprint_manifests,
    publish_atomically,
    require_columns,
    write_manifest,
)
from recsys.paths import earlier_runs
from recsys.schema import (
    CATEGORIES,
    CRITEO_SPARSE_PREFIX,
    ITEM_ID,
    ITEM_IDX,
    LABEL,
    RATING,
    SPLIT,
    SPLITS,
    TIMESTAMP,
    USER_ID,
    USER_IDX,
)

STAGE = "features"
ROW_ORDER = "_row_order"
# New users/items seen only in metadata tables sort after every id seen in interactions.
_NEVER_SEEN = 2**62
_REQUIRED_INTERACTION_COLUMNS = {USER_ID: "string", ITEM_ID: "string", TIMESTAMP: "bigint", RATING: "double"}


@dataclass
class FeaturesResult:
    stage_dir: Path
    manifests: dict[str, Manifest]
    previous_vocab: Path | None


def find_previous_vocab(cfg: Mapping[str, Any]) -> Path | None:
    """Explicit ``features.vocab.previous`` or the newest earlier run that has a features stage."""
    explicit = cfg["features"]["vocab"].get("previous")
    if explicit:
        folder = Path(str(explicit))
        if not _has_vocabularies(folder):
            raise InputError(f"{folder}: features.vocab.previous holds no vocab_*/ output with a manifest.")
        return folder
    for run in earlier_runs(cfg["paths"]["root"], str(cfg["run"]["date"])):
        if _has_vocabularies(run / STAGE):
            return run / STAGE
    return None


def _has_vocabularies(folder: Path) -> bool:
    return any((v / "manifest.json").is_file() for v in folder.glob("vocab_*"))


class _Writer:
    """Writes outputs into the staging folder and reads them back for the next job."""

    def __init__(self, spark: SparkSession, staging: Path, digest: str, fingerprint: str) -> None:
        self.spark, self.staging, self.digest, self.fingerprint = spark, staging, digest, fingerprint
        self.manifests: dict[str, Manifest] = {}

    def __call__(self, name: str, frame: DataFrame, **kwargs: Any) -> DataFrame:
        self.manifests[name] = write_output(
            frame, self.staging / name, config_hash=self.digest, source_fingerprint=self.fingerprint, **kwargs
        )
        return read_parquet(self.spark, self.staging / name)

    def add_counts(self, name: str, counts: Mapping[str, int]) -> None:
        """Record sizes known only after writing (vocabulary size, rows per split) in the manifest."""
        self.manifests[name].counts.update(counts)
        write_manifest(self.staging / name, self.manifests[name])


def _previous(spark: SparkSession, previous: Path | None, spec: VocabSpec) -> DataFrame | None:
    if previous is None or not (previous / spec.name).is_dir():
        return None
    return read_parquet(spark, previous / spec.name)


def _vocab(
    write: _Writer, tokens: DataFrame, spec: VocabSpec, previous: Path | None
) -> tuple[DataFrame, int]:
    prior = _previous(write.spark, previous, spec)
    vocab = extend_vocabulary(tokens, spec, prior).orderBy(spec.index).coalesce(1)
    known = 0 if prior is None else prior.count()
    written = write(spec.name, vocab, counts={"known_tokens": known})
    size = vocabulary_size(written, spec)
    write.add_counts(
        spec.name, {"num_embeddings": size, "new_tokens": write.manifests[spec.name].row_count - known}
    )
    return written, size


def run_features(spark: SparkSession, cfg: Mapping[str, Any], ingest: Path, stage: Path) -> FeaturesResult:
    """Build every features output from the published ingest stage ``ingest``; publish ``stage``."""
    if (ingest / "ctr_events").is_dir():
        return run_criteo_features(spark, cfg, ingest, stage)
    fcfg = cfg["features"]
    interactions, inter_manifest = read_output(spark, ingest / "interactions")
    require_columns(ingest / "interactions", inter_manifest, _REQUIRED_INTERACTION_COLUMNS)
    items = read_output(spark, ingest / "items")[0] if (ingest / "items").is_dir() else None
    users = read_output(spark, ingest / "users")[0] if (ingest / "users").is_dir() else None
    attributes = [
        a for a in fcfg["vocab"]["user_attributes"] or [] if users is not None and a in users.columns
    ]
    missing = set(fcfg["vocab"]["user_attributes"] or []) - set(attributes)
    if missing and users is not None:
        raise ConfigError(
            f"{ingest / 'users'}: features.vocab.user_attributes names {sorted(missing)}, not columns of the "
            f"users table ({users.columns})."
        )
    previous = find_previous_vocab(cfg)
    upstream = [p for p in (ingest / n for n in ("interactions", "items", "users")) if p.is_dir()]
    digest = config_hash({"features": fcfg, "seed": cfg["seed"]})
    fingerprint = fingerprint_manifests(upstream)

    with publish_atomically(stage) as staging:
        write = _Writer(spark, staging, digest, fingerprint)
        first = interactions.select(USER_ID, F.col(TIMESTAMP).alias(FIRST_SEEN))
        if users is not None:
            first = first.unionByName(
                users.select(USER_ID, F.lit(_NEVER_SEEN).cast("long").alias(FIRST_SEEN))
            )
        user_vocab, num_users = _vocab(write, first, USER_VOCAB, previous)
        first = interactions.select(ITEM_ID, F.col(TIMESTAMP).alias(FIRST_SEEN))
        if items is not None:
            first = first.unionByName(
                items.select(ITEM_ID, F.lit(_NEVER_SEEN).cast("long").alias(FIRST_SEEN))
            )
        item_vocab, num_items = _vocab(write, first, ITEM_VOCAB, previous)
        category_tokens = (
            items.select(
                F.explode(CATEGORIES).alias(CATEGORY_VOCAB.token), F.lit(0).cast("long").alias(FIRST_SEEN)
            )
            if items is not None
            else spark.createDataFrame([], f"{CATEGORY_VOCAB.token} string, {FIRST_SEEN} long")
        )
        category_vocab, num_categories = _vocab(write, category_tokens, CATEGORY_VOCAB, previous)
        attribute_vocabs: dict[str, tuple[VocabSpec, DataFrame]] = {}
        for attribute in attributes:
            assert users is not None
            spec = attribute_vocab(attribute)
            tokens = users.select(F.col(attribute), F.lit(0).cast("long").alias(FIRST_SEEN))
            attribute_vocabs[attribute] = (spec, _vocab(write, tokens, spec, previous)[0])

        sizes = {"num_users": num_users, "num_items": num_items, "num_categories": num_categories}
        encoded = encode(encode(interactions, user_vocab, USER_VOCAB), item_vocab, ITEM_VOCAB)
        split_cfg = SplitConfig(
            method=str(fcfg["split"]["method"]),
            min_user_events=int(fcfg["split"]["min_user_events"]),
            valid_fraction=float(fcfg["split"]["valid_fraction"]),
            test_fraction=float(fcfg["split"]["test_fraction"]),
            seed=int(cfg["seed"]),
        )
        split = assign_splits(encoded, split_cfg).select(
            USER_IDX, ITEM_IDX, USER_ID, ITEM_ID, TIMESTAMP, RATING, LABEL, "event_type", SPLIT
        )
        split = write("split", split, counts=sizes, partition_by=[SPLIT], distinct=[USER_IDX, ITEM_IDX])
        split_counts = {
            r[SPLIT]: int(r["n"]) for r in split.groupBy(SPLIT).agg(F.count(F.lit(1)).alias("n")).collect()
        }
        write.add_counts("split", {f"rows_{s}": split_counts.get(s, 0) for s in SPLITS})

        sequences = build_sequences(split, int(fcfg["sequences"]["max_length"]))
        write(
            "sequences",
            sequences,
            counts={**sizes, "max_length": int(fcfg["sequences"]["max_length"])},
            distinct=[USER_IDX],
        )
        write("popularity", item_popularity(split), counts=sizes)

        content = build_content(item_vocab, items, str(fcfg["content"]["separator"]))
        content = encode_list(content, CATEGORIES, category_vocab, CATEGORY_VOCAB, CATEGORY_IDX)
        content = write("content", content.orderBy(ITEM_IDX), counts=sizes)

        ctr_cfg = CTRConfig(
            rating_threshold=float(fcfg["ctr"]["rating_threshold"]),
            negatives_per_positive=int(fcfg["ctr"]["negatives_per_positive"]),
            recent_items=int(fcfg["ctr"]["recent_items"]),
            seed=int(cfg["seed"]),
        )
        ctr = build_ctr_samples(split, num_items, ctr_cfg)
        ctr = ctr.join(content.select(ITEM_IDX, CATEGORY_IDX), on=ITEM_IDX, how="left")
        encoded_users = _encoded_users(user_vocab, users, attribute_vocabs)
        if encoded_users is not None:
            encoded_users = write("users", encoded_users, counts=sizes)
            ctr = ctr.join(encoded_users.drop(USER_ID), on=USER_IDX, how="left")
        attr_sizes = {
            f"num_{a}": write.manifests[s.name].counts["num_embeddings"]
            for a, (s, _) in attribute_vocabs.items()
        }
        write("ctr", ctr, counts={**sizes, **attr_sizes}, partition_by=[SPLIT])
        labels = {
            int(r[LABEL]): int(r["n"])
            for r in read_parquet(spark, staging / "ctr")
            .groupBy(LABEL)
            .agg(F.count(F.lit(1)).alias("n"))
            .collect()
        }
        write.add_counts("ctr", {"positives": labels.get(1, 0), "negatives": labels.get(0, 0)})
    return FeaturesResult(stage, write.manifests, previous)


def _encoded_users(
    user_vocab: DataFrame, users: DataFrame | None, vocabs: Mapping[str, tuple[VocabSpec, DataFrame]]
) -> DataFrame | None:
    if users is None:
        return None
    out = user_vocab.join(users, on=USER_ID, how="inner")
    for spec, vocab in vocabs.values():
        out = encode(out, vocab, spec)
    return out.select(USER_IDX, USER_ID, *[spec.index for spec, _ in vocabs.values()])


def run_criteo_features(
    spark: SparkSession, cfg: Mapping[str, Any], ingest: Path, stage: Path
) -> FeaturesResult:
    """Criteo: one vocabulary per categorical column, the events with every categorical encoded, and a
    split by row order (the files are in time order and carry no timestamp): the last
    ``features.split.test_fraction`` of the rows are test, the ``valid_fraction`` before them valid."""
    events, _ = read_output(spark, ingest / "ctr_events")
    # Row order of the published Parquet = file order (ingest does not shuffle Criteo rows).
    events = events.withColumn(ROW_ORDER, F.monotonically_increasing_id())
    split_cfg = cfg["features"]["split"]
    sparse = [c for c in events.columns if c.startswith(CRITEO_SPARSE_PREFIX)]
    previous = find_previous_vocab(cfg)
    digest = config_hash({"features": cfg["features"], "seed": cfg["seed"]})
    with publish_atomically(stage) as staging:
        write = _Writer(spark, staging, digest, fingerprint_manifests([ingest / "ctr_events"]))
        encoded = events
        sizes: dict[str, int] = {}
        for column in sparse:
            spec = VocabSpec(f"vocab_{column}", column, f"{column}_idx")
            vocab, sizes[f"num_{column}"] = _vocab(
                write, events.select(column, F.lit(0).cast("long").alias(FIRST_SEEN)), spec, previous
            )
            encoded = encode(encoded, vocab, spec).drop(column)
        encoded = split_temporal(
            encoded, float(split_cfg["valid_fraction"]), float(split_cfg["test_fraction"]), ROW_ORDER
        )
        write("ctr", encoded.drop(ROW_ORDER), counts=sizes, partition_by=[SPLIT])
        rows = {
            r[SPLIT]: int(r["count"])
            for r in read_parquet(spark, staging / "ctr").groupBy(SPLIT).count().collect()
        }
        write.add_counts("ctr", {f"rows_{s}": rows.get(s, 0) for s in SPLITS})
    return FeaturesResult(stage, write.manifests, previous)
