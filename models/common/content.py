"""Item content vectors, computed once per snapshot and cached (shared by the Molar model and RecLoRA).

Input is the features stage's ``content`` output (one row per vocabulary item). The vectors are published
as their own stage output ``<root>/<run.date>/content_vectors/<modality>-<encoder>/`` (Parquet
``item_idx, vector, has_content`` + ``manifest.json``). The manifest's ``extra.fingerprint`` hashes the
content input values, the encoder identity (weights) and the settings that change the vectors; a later
call with the same fingerprint loads the cache instead of encoding again.

Modalities:
    ``text``                         item ``text`` through sentence-transformers (default: bundled MiniLM).
    ``image``                        ``image_path`` files through a local Hugging Face vision checkpoint.
    ``precomputed:<name>_embedding`` a list<float> column carried from the items table, normalised.

Shapes: N vocabulary rows (incl. reserved 0 = padding, 1 = OOV), D vector dimension.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from models.common.encoders import ContentEncoder, build_encoder
from recsys.console import console
from recsys.errors import InputError, ManifestError
from recsys.manifest import Manifest, publish_atomically, read_manifest, write_manifest
from recsys.paths import RunPaths
from recsys.schema import FIRST_INDEX, ITEM_IDX
from recsys.tables import read_arrow

STAGE = "content_vectors"
CONTENT_OUTPUT = "content"
ITEM_VOCAB_OUTPUT = "vocab_item"
VECTOR = "vector"
HAS_CONTENT = "has_content"
_DATA_FILE = "vectors.parquet"
# Bumped when the cache layout or the vector post-processing changes, so old caches are recomputed.
_CACHE_VERSION = 1


@dataclass(frozen=True)
class ContentVectors:
    """Content vectors of every vocabulary item.

    Attributes:
        vectors: ``[N, D]`` float32, row i = item_idx i; rows are L2-normalised, rows without content
            (reserved ids, empty text, no image) are zeros.
        has_content: ``[N]`` bool, False for reserved rows and items without content.
        encoder: encoder identity, e.g. ``text:all-MiniLM-L6-v2``.
        fingerprint: sha256 of (content input fingerprint, encoder identity, encoder settings).
        folder: the cache folder the vectors were loaded from or written to.
    """

    vectors: np.ndarray
    has_content: np.ndarray
    encoder: str
    fingerprint: str
    folder: Path


def load_content_vectors(cfg: Mapping[str, Any], modality: str = "text") -> ContentVectors:
    """Vectors of every item for ``modality``; computed once per snapshot and cached.

    Args:
        cfg: the composed config (plain dict): ``paths.root``, ``run.date`` locate the features stage and
            the cache; ``features.content_encoders`` holds the encoder settings.
        modality: ``text``, ``image`` or ``precomputed:<name>_embedding`` (see the module docstring).

    Returns:
        :class:`ContentVectors` with ``num_items`` rows (from the item vocabulary manifest).

    Raises:
        InputError: missing content column, image file or checkpoint folder (the message names it).
        ManifestError: the features stage has not been published.
        ConfigError: unknown modality.
    """
    paths = RunPaths.from_cfg(cfg)
    features = paths.features
    encoder = build_encoder(cfg["features"]["content_encoders"], modality)
    num_items = _num_items(features / ITEM_VOCAB_OUTPUT)
    content = _read_content(features / CONTENT_OUTPUT, encoder, num_items)
    fingerprint = _fingerprint(encoder, content, num_items)
    folder = paths.stage(STAGE) / encoder.slug
    cached = _load_cache(folder, fingerprint)
    if cached is not None:
        console.print(f"[green]✓[/green] {encoder.name} vectors loaded from cache {folder}")
        return cached
    vectors, has_content = compute_vectors(encoder, content, num_items)
    _write_cache(folder, vectors, has_content, encoder, fingerprint)
    return ContentVectors(vectors, has_content, encoder.name, fingerprint, folder)


def compute_vectors(
    encoder: ContentEncoder, content: pa.Table, num_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Encode the items that have content; ``[N, D]`` L2-normalised vectors and ``[N]`` has_content."""
    item_idx = np.asarray(content[ITEM_IDX].to_numpy(), dtype=np.int64)
    present = encoder.present(content) & (item_idx >= FIRST_INDEX)
    rows = content.filter(pa.array(present))
    if not len(rows):
        raise InputError(
            f"no item of the content output has input for {encoder.name} (columns {encoder.columns[1:]}): "
            f"all {len(content)} rows are empty, e.g. item_idx {int(item_idx[0]) if len(item_idx) else '-'}."
        )
    start = time.perf_counter()
    encoded = encoder.encode(rows)
    console.print(
        f"[green]✓[/green] {encoder.name}: encoded {len(rows)} of {num_items} items "
        f"[dim]({time.perf_counter() - start:.1f}s)[/dim]"
    )
    norms = np.linalg.norm(encoded, axis=1, keepdims=True)
    dim = encoded.shape[1]
    vectors = np.zeros((num_items, dim), dtype=np.float32)
    has_content = np.zeros(num_items, dtype=bool)
    targets = item_idx[present]
    nonzero = norms[:, 0] > 0
    vectors[targets[nonzero]] = encoded[nonzero] / norms[nonzero]
    has_content[targets[nonzero]] = True
    return vectors, has_content


def _num_items(vocab: Path) -> int:
    manifest = read_manifest(vocab)
    if "num_embeddings" not in manifest.counts:
        raise ManifestError(
            f"{vocab}/manifest.json: counts lack 'num_embeddings'; found {sorted(manifest.counts)}."
        )
    return int(manifest.counts["num_embeddings"])


def _read_content(folder: Path, encoder: ContentEncoder, num_items: int) -> pa.Table:
    manifest = read_manifest(folder)
    found = [e["name"] for e in manifest.schema]
    missing = [c for c in encoder.columns if c not in found]
    if missing:
        raise InputError(
            f"{folder}: column {missing[0]!r} missing from the content output, needed by {encoder.name}; "
            f"found columns {found}. Precomputed vectors must be list<float> columns named '*_embedding' "
            f"on the items table, e.g. 'image_embedding'."
        )
    content = read_arrow(folder, columns=encoder.columns).sort_by([(ITEM_IDX, "ascending")])
    item_idx = np.asarray(content[ITEM_IDX].to_numpy(), dtype=np.int64)
    if len(item_idx) and (item_idx[-1] >= num_items or len(np.unique(item_idx)) != len(item_idx)):
        raise ManifestError(
            f"{folder}: column {ITEM_IDX!r} must hold distinct ids below the item vocabulary size "
            f"{num_items} (vocab_item/manifest.json num_embeddings); found max {int(item_idx[-1])} over "
            f"{len(item_idx)} rows ({len(np.unique(item_idx))} distinct). Content and vocabulary come from "
            f"different features runs?"
        )
    return content


def _fingerprint(encoder: ContentEncoder, content: pa.Table, num_items: int) -> str:
    payload = {
        "cache_version": _CACHE_VERSION,
        "num_items": num_items,
        "input": encoder.input_fingerprint(content),
        "encoder": encoder.identity(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _load_cache(folder: Path, fingerprint: str) -> ContentVectors | None:
    if not (folder / _DATA_FILE).is_file():
        return None
    try:
        manifest = read_manifest(folder)
    except ManifestError:
        return None
    if manifest.extra.get("fingerprint") != fingerprint:
        return None
    table = pq.read_table(folder / _DATA_FILE)
    dim = int(manifest.counts["dim"])
    flat = table[VECTOR].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = np.asarray(flat, dtype=np.float32).reshape(table.num_rows, dim)
    has_content = np.asarray(table[HAS_CONTENT].to_numpy(zero_copy_only=False), dtype=bool)
    return ContentVectors(vectors, has_content, str(manifest.extra["encoder"]), fingerprint, folder)


def _write_cache(
    folder: Path, vectors: np.ndarray, has_content: np.ndarray, encoder: ContentEncoder, fingerprint: str
) -> None:
    num_items, dim = vectors.shape
    table = pa.table(
        {
            ITEM_IDX: pa.array(np.arange(num_items, dtype=np.int64)),
            VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
            HAS_CONTENT: pa.array(has_content),
        }
    )
    manifest = Manifest(
        name=folder.name,
        row_count=num_items,
        schema=[
            {"name": ITEM_IDX, "type": "bigint"},
            {"name": VECTOR, "type": "array<float>"},
            {"name": HAS_CONTENT, "type": "boolean"},
        ],
        counts={"num_items": num_items, "dim": dim, "with_content": int(has_content.sum())},
        config_hash=hashlib.sha256(json.dumps(encoder.identity(), sort_keys=True).encode()).hexdigest(),
        source_fingerprint=fingerprint,
        extra={"fingerprint": fingerprint, "encoder": encoder.name},
    )
    with publish_atomically(folder) as staging:
        pq.write_table(table, staging / _DATA_FILE)
        write_manifest(staging, manifest)
