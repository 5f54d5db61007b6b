"""Item content vectors: real MiniLM text encoding, a tiny random HF vision model over generated PNGs,
precomputed columns, and the fingerprinted cache (hit when nothing changed, recompute when input or an
encoder setting changed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from models.common import ContentVectors, load_content_vectors
from models.common.encoders import bundled_minilm_path
from recsys.config import compose, to_plain
from recsys.errors import ConfigError, InputError, ManifestError
from recsys.manifest import Manifest, read_manifest, write_manifest
from recsys.paths import stage_dir
from recsys.schema import FIRST_INDEX, IMAGE_PATH, ITEM_ID, ITEM_IDX, OOV_INDEX, PADDING_INDEX, TEXT, TITLE

DATE = "2024-01-01"
TEXTS = [
    "Star Wars: rebels fight the galactic empire with starships and laser swords in outer space",
    "Star Trek: the starship Enterprise explores outer space and meets alien civilisations",
    "Pride and Prejudice: a romance of manners and marriage in the English countryside",
    "Sense and Sensibility: two sisters, love and marriage in rural England",
    "",
]


def content_cfg(root: Path, *overrides: str) -> dict[str, Any]:
    return to_plain(compose([f"paths.root={root}", f"run.date={DATE}", *overrides]))


def publish_content(
    root: Path,
    texts: Sequence[str],
    image_paths: Sequence[str | None] | None = None,
    extra: dict[str, pa.Array] | None = None,
) -> Path:
    """Publish a features stage (``content`` + ``vocab_item`` manifest) laid out as the features job does;
    item ``FIRST_INDEX + i`` has ``texts[i]``."""
    features = stage_dir(root, DATE, "features")
    count = len(texts)
    table = pa.table(
        {
            ITEM_IDX: pa.array(range(FIRST_INDEX, FIRST_INDEX + count), type=pa.int64()),
            ITEM_ID: pa.array([f"i{i}" for i in range(count)]),
            TITLE: pa.array(list(texts)),
            TEXT: pa.array(list(texts)),
            IMAGE_PATH: pa.array(list(image_paths) if image_paths else [None] * count, type=pa.string()),
            **(extra or {}),
        }
    )
    folder = features / "content"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    pq.write_table(table, folder / "part-00000.parquet")
    schema = [{"name": f.name, "type": str(f.type)} for f in table.schema]
    sizes = {"num_items": count + FIRST_INDEX}
    write_manifest(folder, Manifest("content", count, schema, sizes, "c", "s"))
    write_manifest(
        features / "vocab_item",
        Manifest("vocab_item", count, [], {"num_embeddings": count + FIRST_INDEX}, "c", "s"),
    )
    return features


def _cos(cv: ContentVectors, a: int, b: int) -> float:
    return float(cv.vectors[FIRST_INDEX + a] @ cv.vectors[FIRST_INDEX + b])


def _manifest_stamp(cv: ContentVectors) -> int:
    return (cv.folder / "manifest.json").stat().st_mtime_ns


# ---------------------------------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ContentVectors]:
    root = tmp_path_factory.mktemp("text")
    publish_content(root, TEXTS)
    return root, load_content_vectors(content_cfg(root), "text")


def test_text_vectors_shape_norm_and_reserved_rows(text_run: tuple[Path, ContentVectors]) -> None:
    _, cv = text_run
    assert cv.vectors.shape == (len(TEXTS) + FIRST_INDEX, 384)
    assert cv.vectors.dtype == np.float32
    assert cv.encoder == "text:all-MiniLM-L6-v2"
    expected = np.array([False, False, True, True, True, True, False])
    np.testing.assert_array_equal(cv.has_content, expected)
    norms = np.linalg.norm(cv.vectors, axis=1)
    np.testing.assert_allclose(norms[cv.has_content], 1.0, rtol=1e-5)
    assert not cv.vectors[[PADDING_INDEX, OOV_INDEX, FIRST_INDEX + 4]].any()


def test_text_vectors_put_related_items_closer(text_run: tuple[Path, ContentVectors]) -> None:
    _, cv = text_run
    assert _cos(cv, 0, 1) > _cos(cv, 0, 2)
    assert _cos(cv, 0, 1) > _cos(cv, 1, 3)
    assert _cos(cv, 2, 3) > _cos(cv, 2, 1)
    assert _cos(cv, 2, 3) > _cos(cv, 3, 0)


def test_text_vectors_match_sentence_transformers_row_by_item_idx(
    text_run: tuple[Path, ContentVectors],
) -> None:
    from sentence_transformers import SentenceTransformer

    _, cv = text_run
    model = SentenceTransformer(str(bundled_minilm_path()), device="cpu", local_files_only=True)
    model.max_seq_length = 128
    direct = model.encode([TEXTS[3], TEXTS[0]], normalize_embeddings=True)
    np.testing.assert_allclose(cv.vectors[[FIRST_INDEX + 3, FIRST_INDEX]], direct, atol=1e-5)


def test_text_cache_hit_then_recompute_on_changed_text_or_setting(
    text_run: tuple[Path, ContentVectors],
) -> None:
    root, first = text_run
    stamp = _manifest_stamp(first)
    again = load_content_vectors(content_cfg(root), "text")
    assert _manifest_stamp(again) == stamp
    assert again.fingerprint == first.fingerprint
    np.testing.assert_array_equal(again.vectors, first.vectors)

    changed_setting = load_content_vectors(
        content_cfg(root, "features.content_encoders.text.max_seq_length=8")
    )
    assert changed_setting.fingerprint != first.fingerprint
    assert read_manifest(changed_setting.folder).extra["fingerprint"] == changed_setting.fingerprint
    assert not np.allclose(changed_setting.vectors[FIRST_INDEX], first.vectors[FIRST_INDEX])

    # Batch size only changes speed: still the previous (max_seq_length=8) cache.
    stamp = _manifest_stamp(changed_setting)
    same = load_content_vectors(
        content_cfg(
            root,
            "features.content_encoders.text.max_seq_length=8",
            "features.content_encoders.text.batch_size=2",
        )
    )
    assert _manifest_stamp(same) == stamp

    texts = [*TEXTS[:4], "Alien: a starship crew hunted by a creature in deep space"]
    publish_content(root, texts)
    changed_input = load_content_vectors(content_cfg(root), "text")
    assert changed_input.fingerprint not in {first.fingerprint, changed_setting.fingerprint}
    assert changed_input.has_content[FIRST_INDEX + 4]
    np.testing.assert_allclose(changed_input.vectors[FIRST_INDEX], first.vectors[FIRST_INDEX], atol=1e-6)


def test_missing_text_model_folder_is_an_input_error(tmp_path: Path) -> None:
    publish_content(tmp_path, TEXTS)
    missing = tmp_path / "no-such-model"
    with pytest.raises(InputError, match=r"no-such-model.*text\.model_path"):
        load_content_vectors(content_cfg(tmp_path, f"features.content_encoders.text.model_path={missing}"))


def test_unknown_modality_is_a_config_error(tmp_path: Path) -> None:
    publish_content(tmp_path, TEXTS)
    with pytest.raises(ConfigError, match="audio"):
        load_content_vectors(content_cfg(tmp_path), "audio")


# ---------------------------------------------------------------------------------------------- image


def _tiny_checkpoint(folder: Path, family: str) -> Path:
    """Randomly initialised vision model + its image processor, saved like a downloaded checkpoint."""
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
        ViTConfig,
        ViTImageProcessor,
        ViTModel,
    )

    torch.manual_seed(0)
    size = 32
    if family == "clip":
        clip = CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, projection_dim=16, num_hidden_layers=2,
            num_attention_heads=4, image_size=size, patch_size=8,
        )  # fmt: skip
        CLIPVisionModelWithProjection(clip).save_pretrained(folder)
        CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        ).save_pretrained(folder)
    else:
        vit = ViTConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=size, patch_size=8,
        )  # fmt: skip
        ViTModel(vit).save_pretrained(folder)
        ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)
    return folder


def _images(folder: Path) -> list[str]:
    """Four generated PNGs: two different noise images, a gradient, and a byte-identical copy of the first."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    arrays = [
        rng.integers(0, 256, (40, 48, 3), dtype=np.uint8),
        rng.integers(0, 256, (40, 48, 3), dtype=np.uint8),
        np.repeat(np.linspace(0, 255, 48, dtype=np.uint8)[None, :, None], 40, axis=0).repeat(3, axis=2),
    ]
    arrays.append(arrays[0].copy())
    names = []
    for i, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"img{i}.png")
        names.append(f"img{i}.png")
    return names


@pytest.mark.parametrize("family", ["clip", "vit"])
def test_image_vectors_from_local_checkpoint(tmp_path: Path, family: str) -> None:
    checkpoint = _tiny_checkpoint(tmp_path / f"tiny-{family}", family)
    names = _images(tmp_path / "images")
    texts = ["a", "b", "c", "d", "no image"]
    publish_content(tmp_path / "runs", texts, [*names, None])
    cfg = content_cfg(
        tmp_path / "runs",
        f"features.content_encoders.image.checkpoint={checkpoint}",
        f"features.content_encoders.image.image_root={tmp_path / 'images'}",
    )
    cv = load_content_vectors(cfg, "image")
    assert cv.encoder == f"image:tiny-{family}"
    np.testing.assert_array_equal(cv.has_content, [False, False, True, True, True, True, False])
    np.testing.assert_allclose(np.linalg.norm(cv.vectors[cv.has_content], axis=1), 1.0, rtol=1e-5)
    vec = cv.vectors[FIRST_INDEX:]
    np.testing.assert_allclose(vec[0], vec[3], atol=1e-6)
    assert not np.allclose(vec[0], vec[1], atol=1e-3)
    assert not np.allclose(vec[0], vec[2], atol=1e-3)

    stamp = _manifest_stamp(cv)
    assert _manifest_stamp(load_content_vectors(cfg, "image")) == stamp
    # Replacing an image file (same name) is a changed input.
    Image.fromarray(np.zeros((40, 48, 3), dtype=np.uint8)).save(tmp_path / "images" / names[1])
    redone = load_content_vectors(cfg, "image")
    assert redone.fingerprint != cv.fingerprint
    assert not np.allclose(redone.vectors[FIRST_INDEX + 1], vec[1], atol=1e-3)


def test_missing_image_file_names_it(tmp_path: Path) -> None:
    checkpoint = _tiny_checkpoint(tmp_path / "tiny-clip", "clip")
    names = _images(tmp_path / "images")
    publish_content(tmp_path / "runs", ["a", "b"], [names[0], "gone.png"])
    cfg = content_cfg(
        tmp_path / "runs",
        f"features.content_encoders.image.checkpoint={checkpoint}",
        f"features.content_encoders.image.image_root={tmp_path / 'images'}",
    )
    with pytest.raises(
        InputError, match=r"gone\.png: image file missing \(column 'image_path', item_id 'i1'\)"
    ):
        load_content_vectors(cfg, "image")
    assert not (stage_dir(tmp_path / "runs", DATE, "content_vectors") / "image-tiny-clip").exists()


def test_image_modality_without_checkpoint_is_an_input_error(tmp_path: Path) -> None:
    publish_content(tmp_path, ["a"], ["x.png"])
    with pytest.raises(InputError, match=r"image\.checkpoint is null.*e\.g\."):
        load_content_vectors(content_cfg(tmp_path), "image")


# ---------------------------------------------------------------------------------------------- precomputed


def test_precomputed_column_passes_through_normalised(tmp_path: Path) -> None:
    values = [[3.0, 4.0, 0.0], [0.0, 0.0, 2.0], None, [0.0, 0.0, 0.0]]
    column = pa.array(values, type=pa.list_(pa.float32()))
    publish_content(tmp_path, ["a", "b", "c", "d"], extra={"image_embedding": column})
    cv = load_content_vectors(content_cfg(tmp_path), "precomputed:image_embedding")
    assert cv.encoder == "precomputed:image_embedding"
    expected = np.zeros((6, 3), dtype=np.float32)
    expected[FIRST_INDEX] = [0.6, 0.8, 0.0]
    expected[FIRST_INDEX + 1] = [0.0, 0.0, 1.0]
    np.testing.assert_allclose(cv.vectors, expected, atol=1e-6)
    np.testing.assert_array_equal(cv.has_content, [False, False, True, True, False, False])


def test_precomputed_column_missing_or_ragged(tmp_path: Path) -> None:
    ragged = pa.array([[1.0, 2.0], [1.0, 2.0, 3.0]], type=pa.list_(pa.float32()))
    publish_content(tmp_path, ["a", "b"], extra={"image_embedding": ragged})
    with pytest.raises(InputError, match=r"'clip_embedding' missing from the content output"):
        load_content_vectors(content_cfg(tmp_path), "precomputed:clip_embedding")
    with pytest.raises(InputError, match=r"different lengths \[2, 3\].*item_id 'i1' has 3"):
        load_content_vectors(content_cfg(tmp_path), "precomputed:image_embedding")
    with pytest.raises(ConfigError, match="_embedding"):
        load_content_vectors(content_cfg(tmp_path), "precomputed:title")
    publish_content(
        tmp_path, ["a", "b"], extra={"image_embedding": pa.array([None, []], pa.list_(pa.float32()))}
    )
    with pytest.raises(InputError, match=r"no item .* precomputed:image_embedding .* all 2 rows are empty"):
        load_content_vectors(content_cfg(tmp_path), "precomputed:image_embedding")


def test_content_from_another_vocabulary_is_refused(tmp_path: Path) -> None:
    features = publish_content(tmp_path, ["a", "b", "c"])
    write_manifest(
        features / "vocab_item", Manifest("vocab_item", 1, [], {"num_embeddings": FIRST_INDEX + 1}, "c", "s")
    )
    with pytest.raises(ManifestError, match=r"'item_idx' must hold distinct ids below .* 3 .* found max 4"):
        load_content_vectors(content_cfg(tmp_path), "text")
