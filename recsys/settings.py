"""Schemas (Hydra structured configs) of the config groups every layer shares.

Each dataclass is the one place a group's keys, types and defaults are stated; ``recsys.config.compose``
checks every composed group against its schema (:func:`register_core_schemas`), and code reads a group
through ``recsys.config.typed``. Family-specific groups (``model``, ``bench``) have their schemas next to the
family's code and are registered by the layer above.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from recsys.errors import ConfigError, InputError
from recsys.structured import register_schema, typed


def _check_limit(key: str, value: Any) -> None:
    """Lightning's ``limit_*_batches``: null (all), a batch count (int >= 0) or a fraction in [0, 1]."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return
    if isinstance(value, float) and 0.0 <= value <= 1.0:
        return
    raise ConfigError(
        f"config key trainer.{key}={value!r}: give null (every batch), a batch count (e.g. 5) "
        "or a fraction in [0, 1] (e.g. 0.25)."
    )


# trainer.accelerator values that need CUDA devices.
GPU_ACCELERATORS = ("gpu", "cuda")


@dataclass(frozen=True)
class TrainerConfig:
    """``conf/trainer/*.yaml``: the Lightning ``Trainer`` settings every model family shares."""

    accelerator: str
    devices: int
    check_val_every_n_epoch: int
    log_every_n_steps: int
    # Machines of one training; above 1, every node runs the command under torchrun (gpu_multinode.yaml).
    num_nodes: int = 1
    # null = every batch; an int = that many batches; a float in [0, 1] = that fraction.
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_test_batches: Any = None
    # Refuse to publish a model whose validation metric ends below the best baseline's (see the model's
    # floor_baselines); off for wiring runs (trainer=smoke), whose few batches teach the model nothing.
    learning_floor: bool = True

    def __post_init__(self) -> None:
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
            _check_limit(key, getattr(self, key))
        if self.devices < 1:
            raise ConfigError(f"config key trainer.devices={self.devices}: must be >= 1.")
        if self.num_nodes < 1:
            raise ConfigError(f"config key trainer.num_nodes={self.num_nodes}: must be >= 1.")


# --- paths, run ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathsConfig:
    """``paths`` in ``conf/config.yaml``: every run writes under ``<root>/<run.date>/<stage>/<output>/``."""

    root: str

    def __post_init__(self) -> None:
        # Path("s3a://bucket/runs") is a relative local folder named "s3a:": refuse instead of writing there.
        scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", self.root)
        if scheme is not None:
            raise ConfigError(
                f"config key paths.root={self.root!r}: {scheme.group(1)}:// storage is not supported yet; "
                f"stages publish by renaming folders and need a POSIX filesystem. Use a local or shared "
                f"mount (NFS, Lustre, a CSI volume), e.g. paths.root=/mnt/shared/recsys/runs."
            )


@dataclass(frozen=True)
class RunConfig:
    """``run`` in ``conf/config.yaml``: the snapshot date (``YYYY-MM-DD``, checked by ``recsys.paths``) and a
    free-form identifier recorded in manifests."""

    date: str
    id: str


@dataclass(frozen=True)
class LocksConfig:
    """``locks`` in ``conf/config.yaml``: how long a command waits for another holding a lock it needs
    (:mod:`recsys.locks`).

    Attributes:
        wait_s: for another command producing the same output, before refusing.
        publish_wait_s: a finished stage, for the stages still reading the output it replaces.
        poll_s: how often a waiting command retries.
    """

    wait_s: float = 60.0
    publish_wait_s: float = 3600.0
    poll_s: float = 0.2


# --- data ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataConfig:
    """``conf/data/*.yaml``: the keys every input format has (formats with keys of their own subclass it, see
    :data:`DATA_SCHEMAS`). Every key is given by the yaml: they describe the data set, there is no default."""

    name: str
    format: str
    # Input folder; null only where the format has its own (bundled or generated data).
    path: str | None
    encoding: str
    # Unit of the timestamps in the files: s or ms (checked by ``features.validate``).
    timestamp_unit: str
    # Valid rating range; rows outside go to quarantine. null = unchecked.
    rating_min: float | None
    rating_max: float | None
    # User columns that become categorical features.
    user_attributes: tuple[str, ...]

    @property
    def options(self) -> Mapping[str, Any]:
        """Every key of the group by name, format-specific ones included (what the adapters read)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def require_path(self) -> Path:
        if not self.path:
            raise InputError(f"data={self.name} needs a folder: pass data.path=DIR.")
        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            raise InputError(f"{folder}: data.path is not a readable folder (data={self.name}).")
        return folder


@dataclass(frozen=True)
class AtomicDataConfig(DataConfig):
    """``format: atomic``: RecBole atomic files ``<path>/<stem>.inter`` (+ ``.item``, ``.user``)."""

    # Folder of a data set shipped in an installed wheel, read when path is null (e.g. recbole/ml-100k).
    bundled: str | None
    stem: str
    # Atomic field name -> canonical column; unlisted item fields are appended to the item text.
    fields: dict[str, str]
    # Item fields excluded from the assembled text.
    text_exclude: tuple[str, ...]


@dataclass(frozen=True)
class MovieLens100kRawDataConfig(DataConfig):
    """``format: movielens_100k_raw``: the original GroupLens ml-100k folder (u.data, u.item, u.user)."""

    # Genre flag order of u.item.
    genres: tuple[str, ...]


@dataclass(frozen=True)
class AmazonDataConfig(DataConfig):
    """``format: amazon2023``: ``<path>/<category>.jsonl`` reviews + ``<path>/meta_<category>.jsonl``."""

    category: str
    # Folder with local item images named <parent_asin>.jpg; null = no image paths.
    image_dir: str | None


@dataclass(frozen=True)
class CriteoDataConfig(DataConfig):
    """``format: criteo``: label, dense integer features, hashed categorical features; TSV, no header."""

    # Glob of the TSV files under path.
    glob: str
    num_dense: int
    num_sparse: int


@dataclass(frozen=True)
class SyntheticDataConfig(DataConfig):
    """``format: synthetic``: seeded generated interactions (``recsys.datasets.synthetic``)."""

    num_users: int
    num_items: int
    num_events: int
    zipf_exponent: float
    mean_session_length: float
    num_categories: int
    rated_fraction: float


@dataclass(frozen=True)
class InteractionColumns:
    """The interaction file's column name for each canonical column (``data.columns``, ``format: table``)."""

    user_id: str
    item_id: str
    timestamp: str
    # Optional columns: null = the export has none.
    rating: str | None = None
    event_type: str | None = None


@dataclass(frozen=True)
class ItemFileConfig:
    """An optional item metadata file of ``format: table``: its location and column names."""

    # File, folder or glob, relative to data.path unless absolute.
    path: str
    item_id: str
    title: str | None = None
    # One column holding every category, split on ``categories_separator``.
    categories: str | None = None
    categories_separator: str = "|"
    # Free text (description); appended to the title in the items' text.
    text: str | None = None


@dataclass(frozen=True)
class UserFileConfig:
    """An optional user file of ``format: table``; ``data.user_attributes`` names its attribute columns."""

    path: str
    user_id: str


@dataclass(frozen=True)
class TableDataConfig(DataConfig):
    """``format: table``: your own interaction log as CSV or Parquet, mapped by column name
    (``conf/data/csv.yaml`` is the template; ``recsys.datasets.tabular`` reads it)."""

    # csv or parquet.
    file_format: str
    # Interaction file, folder or glob, relative to data.path unless absolute.
    interactions: str
    columns: InteractionColumns
    # CSV only: field separator, quote and escape characters, whether the first line names the columns.
    delimiter: str = ","
    quote: str = '"'
    escape: str = '"'
    header: bool = True
    # With timestamp_unit: datetime, the Spark datetime pattern of the timestamp column (null = ISO 8601).
    timestamp_format: str | None = None
    items: ItemFileConfig | None = None
    users: UserFileConfig | None = None

    def __post_init__(self) -> None:
        if self.file_format not in TABLE_FILE_FORMATS:
            raise ConfigError(
                f"config key data.file_format={self.file_format!r}: choose one of {TABLE_FILE_FORMATS}."
            )
        if self.users is None and self.user_attributes:
            raise ConfigError(
                f"data.user_attributes={list(self.user_attributes)} needs data.users (a user file with "
                "those columns), e.g. {path: users.csv, user_id: customer_id}."
            )


TABLE_FILE_FORMATS = ("csv", "parquet")


DATA_SCHEMAS: dict[str, type[DataConfig]] = {
    "atomic": AtomicDataConfig,
    "movielens_100k_raw": MovieLens100kRawDataConfig,
    "movielens_dat": DataConfig,
    "movielens_csv": DataConfig,
    "amazon2023": AmazonDataConfig,
    "criteo": CriteoDataConfig,
    "parquet": DataConfig,
    "synthetic": SyntheticDataConfig,
    "table": TableDataConfig,
}
"""``data.format`` -> the schema of that format's ``data`` group."""


def data_config(node: Any) -> DataConfig:
    """The composed ``data`` group (a mapping or DictConfig) as its format's schema."""
    data_format = str(node.get("format"))
    schema = DATA_SCHEMAS.get(data_format)
    if schema is None:
        raise ConfigError(f"data.format={data_format!r} is unknown; choose one of {sorted(DATA_SCHEMAS)}.")
    return typed(schema, node, "data")


# --- features -----------------------------------------------------------------------------------------------
# ``conf/features/default.yaml`` gives (and documents) every value.


@dataclass(frozen=True)
class FeaturesValidationConfig:
    max_bad_fraction: float
    examples_per_reason: int


@dataclass(frozen=True)
class FeaturesVocabConfig:
    previous: str | None
    user_attributes: tuple[str, ...]


@dataclass(frozen=True)
class FeaturesSplitConfig:
    method: str
    min_user_events: int
    valid_fraction: float
    test_fraction: float


@dataclass(frozen=True)
class FeaturesSequencesConfig:
    max_length: int


@dataclass(frozen=True)
class FeaturesCTRConfig:
    rating_threshold: float
    negatives_per_positive: int
    recent_items: int


@dataclass(frozen=True)
class FeaturesContentConfig:
    separator: str


@dataclass(frozen=True)
class TextEncoderConfig:
    model_path: str | None
    batch_size: int
    max_seq_length: int


@dataclass(frozen=True)
class ImageEncoderConfig:
    checkpoint: str | None
    batch_size: int
    image_root: str | None


@dataclass(frozen=True)
class ContentEncodersConfig:
    device: str
    text: TextEncoderConfig
    image: ImageEncoderConfig


@dataclass(frozen=True)
class FeaturesConfig:
    """``conf/features/*.yaml``: ingest validation, vocabularies, split, sequences, CTR samples, content."""

    validation: FeaturesValidationConfig
    vocab: FeaturesVocabConfig
    split: FeaturesSplitConfig
    sequences: FeaturesSequencesConfig
    ctr: FeaturesCTRConfig
    content: FeaturesContentConfig
    content_encoders: ContentEncodersConfig


# --- spark, evaluation, tracking ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SparkConfig:
    """``conf/spark/*.yaml``: the SparkSession every job builds (``features.session``)."""

    master: str
    app_name: str
    shuffle_partitions: int
    driver_memory: str
    local_dir: str | None
    # Passed as-is to the session builder.
    extra: dict[str, str]


@dataclass(frozen=True)
class EvaluationConfig:
    """``conf/evaluation/*.yaml``: cut-offs, batching and buckets of the ranking evaluation."""

    ks: tuple[int, ...]
    batch_size: int
    bucket_edges: tuple[int, ...]
    splits: tuple[str, ...]
    promotion_metric: str
    candidates_k: int
    rerank_retriever: str
    # null = every user with a truth item; an int = a seeded uniform sample of that many users per split,
    # so evaluation costs O(max_users x items) instead of O(users x items) on large logs.
    max_users: int | None = None
    sample_seed: int = 0

    def __post_init__(self) -> None:
        if self.max_users is not None and self.max_users < 1:
            raise ConfigError(
                f"config key evaluation.max_users={self.max_users}: must be >= 1, or null to evaluate "
                "every user."
            )


@dataclass(frozen=True)
class TrackingConfig:
    """``conf/tracking/*.yaml``: where MLflow runs and artifacts go."""

    tracking_uri: str
    # null = where the tracking server says.
    artifact_root: str | None
    experiment: str
    # A folder every command of the pipeline shares: registry promotions of one model queue on a lock
    # file in it, so two at once leave the better model champion.
    lock_dir: str


# --- index --------------------------------------------------------------------------------------------------

INNER_PRODUCT = "inner_product"
INDEX_METRICS = (INNER_PRODUCT,)
"""Similarities the retrieval code supports (higher score = more similar)."""
_POSITIVE_INDEX_KEYS = ("train_sample", "nprobe", "ef_search", "ef_construction", "min_points_per_list")


@dataclass(frozen=True)
class IndexConfig:
    """One ``conf/index/<name>.yaml``: which FAISS index to build and how to search it.

    Attributes:
        name: short name of the choice (``flat``, ``hnsw``, ``ivf``, ``ivfpq``).
        factory: FAISS ``index_factory`` string, e.g. ``"Flat"``, ``"HNSW32"``, ``"IVF1024,Flat"``.
        metric: similarity; only ``inner_product`` (higher score = more similar).
        train_sample: most vectors used to train IVF/PQ indexes (a seeded random subset); ``None`` = all.
        nprobe: inverted lists visited per query (IVF indexes only).
        ef_search: candidate list size of the HNSW search (HNSW only).
        ef_construction: candidate list size while building the HNSW graph (HNSW only).
        min_points_per_list: the IVF list count of the factory string is lowered at build time to at most
            ``N // min_points_per_list`` so small catalogs still train (FAISS warns below 39 per centroid).
        use_gpu: ``"auto"`` (GPU when ``faiss.get_num_gpus() > 0``), ``true`` (fail without one) or ``false``.

    Raises:
        ConfigError: an empty name or factory, an unsupported metric, a number below 1 or a ``use_gpu`` other
            than auto/true/false; the message names the key.
    """

    name: str
    factory: str
    metric: str = INNER_PRODUCT
    train_sample: int | None = None
    nprobe: int | None = None
    ef_search: int | None = None
    ef_construction: int | None = None
    min_points_per_list: int = 39
    # "auto", true or false (Any: a structured config has no str-or-bool type).
    use_gpu: Any = "auto"

    def __post_init__(self) -> None:
        for key in ("name", "factory"):
            if not getattr(self, key):
                raise ConfigError(f'config key index.{key} must be set, e.g. `factory: "IVF1024,Flat"`.')
        if self.metric not in INDEX_METRICS:
            raise ConfigError(
                f"config key index.metric: {self.metric!r} is not supported; use `metric: {INNER_PRODUCT}`."
            )
        for key in _POSITIVE_INDEX_KEYS:
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(
                    f"config key index.{key} must be a positive integer or null, got {value!r}."
                )
        if self.use_gpu not in ("auto", True, False):
            raise ConfigError(f"config key index.use_gpu must be auto, true or false, got {self.use_gpu!r}.")


# --- baseline models ----------------------------------------------------------------------------------------
# ``conf/model/{mostpop,itemknn,ease,puresvd}.yaml`` (``family: baseline``), turned into estimators by
# ``recsys.baselines.build_baseline``. The yaml gives (and documents) every value.


@dataclass(frozen=True)
class NoParams:
    """A baseline without hyperparameters (``params: {}``)."""


@dataclass(frozen=True)
class ItemKNNParams:
    neighbors: int
    shrink: float
    block_items: int


@dataclass(frozen=True)
class EASEParams:
    l2: float
    max_items: int


@dataclass(frozen=True)
class PureSVDParams:
    dim: int


@dataclass(frozen=True)
class MostPopConfig:
    name: str
    family: str
    params: NoParams


@dataclass(frozen=True)
class ItemKNNConfig:
    name: str
    family: str
    params: ItemKNNParams


@dataclass(frozen=True)
class EASEConfig:
    name: str
    family: str
    params: EASEParams


@dataclass(frozen=True)
class PureSVDConfig:
    name: str
    family: str
    params: PureSVDParams


BASELINE_SCHEMAS: dict[str, type[Any]] = {
    "mostpop": MostPopConfig,
    "itemknn": ItemKNNConfig,
    "ease": EASEConfig,
    "puresvd": PureSVDConfig,
}
"""``model.name`` of each baseline -> the schema of its ``model`` group."""


def register_core_schemas() -> None:
    """Declare the schema of every group this package owns (``compose`` calls it before checking)."""
    register_schema("trainer", TrainerConfig)
    register_schema("paths", PathsConfig)
    register_schema("run", RunConfig)
    register_schema("locks", LocksConfig)
    for data_format, data_schema in DATA_SCHEMAS.items():
        register_schema("data", data_schema, when=("format", data_format))
    register_schema("features", FeaturesConfig)
    register_schema("spark", SparkConfig)
    register_schema("evaluation", EvaluationConfig)
    register_schema("tracking", TrackingConfig)
    register_schema("index", IndexConfig)
    for name, model_schema in BASELINE_SCHEMAS.items():
        register_schema("model", model_schema, when=("name", name))


@dataclass(frozen=True)
class FeaturesBenchSettings:
    """``conf/bench/features.yaml`` (``recsys bench features``: Spark vs DuckDB on synthetic events)."""

    name: str
    num_events: int
    num_users: int
    num_items: int
    out_dir: str


@dataclass(frozen=True)
class ScalingSize:
    """One size of ``recsys bench scaling``: synthetic events, users and items."""

    events: int
    users: int
    items: int

    def __post_init__(self) -> None:
        if min(self.events, self.users, self.items) < 1 or self.events < self.users:
            raise ConfigError(
                f"bench.sizes entry {self}: events, users and items must be positive and events >= users."
            )

    @property
    def label(self) -> str:
        """``1M``, ``300k``: the size's name in tables, folders and the plot."""
        for unit, scale in (("M", 1_000_000), ("k", 1_000)):
            if self.events >= scale:
                return f"{self.events / scale:g}{unit}"
        return str(self.events)


@dataclass(frozen=True)
class ScalingBenchSettings:
    """``conf/bench/scaling.yaml`` (``recsys bench scaling``: the pipeline's stages against data size)."""

    name: str
    sizes: tuple[ScalingSize, ...]
    pipeline: str
    overrides: tuple[str, ...]
    memory_limit_gb: float
    time_limit_s: float
    sample_interval_s: float
    work_dir: str | None
    out_dir: str

    def __post_init__(self) -> None:
        if not self.sizes:
            raise ConfigError("bench.sizes is empty: give at least one {events, users, items}.")
        events = [s.events for s in self.sizes]
        if events != sorted(set(events)):
            raise ConfigError(f"bench.sizes must grow strictly in events, smallest first; got {events}.")
        if self.memory_limit_gb <= 0 or self.time_limit_s <= 0 or self.sample_interval_s <= 0:
            raise ConfigError(
                "bench.memory_limit_gb, bench.time_limit_s and bench.sample_interval_s must be > 0."
            )


@dataclass(frozen=True)
class ServingBenchSettings:
    """``conf/bench/serving.yaml`` (``recsys bench serving``: served recommender vs served retriever)."""

    name: str
    recommender_uri: str
    retriever_uri: str
    single_requests: int
    batch_requests: int
    batch_users: int
    warmup_requests: int
    k: int
    workers: int
    seed: int
    out_dir: str
    # latency: one client, single and batch requests (the default); load: concurrent clients + fuzz.
    mode: str = "latency"
    load_clients: tuple[int, ...] = (1, 8, 32)
    load_seconds: float = 60.0
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.mode not in ("latency", "load"):
            raise ConfigError(f"bench.mode={self.mode!r}: must be latency or load.")
        if not self.load_clients or min(self.load_clients) < 1 or self.load_seconds <= 0:
            raise ConfigError("bench.load_clients must be counts >= 1 and bench.load_seconds > 0.")


@dataclass(frozen=True)
class RetrievalBenchSettings:
    """``conf/bench/retrieval.yaml`` (``recsys bench retrieval``: FAISS indexes vs the exact one)."""

    name: str
    num_items: int
    dim: int
    num_clusters: int
    cluster_spread: float
    num_queries: int
    k: int
    out_dir: str
