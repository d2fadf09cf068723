"""PerceptionLM (the packed-tiles adapter): a thumbnail and the tiles of each image are packed
on one vision batch axis and split back per image, each tile starting with a class token that
the projector drops; a row's images keep their own tiles and runs of image tokens; tiles never
lie on one patch grid, and building without timm names the extra to install.

What every family does is in tests/test_families.py."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image

from lens_assets.capture.adapters.base import PatchGridError
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import BY_NAME, MissingExtraError
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.pooling import Pooled
from lens_assets.capture.tiny import build_tiny
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import FAMILY_PROMPTS, family_inputs, hooked, missing_modules, token_rows

# The family images (64x48, 40x72, 96x96) become 3x2, 2x3 and 2x2 tiles plus a thumbnail each.
TILES = [7, 7, 5]
BLOCK, PROJECTOR = BY_NAME["perception-lm"].hook_points[:2]


def test_perception_lm_batches_images_with_different_tile_counts(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("perception-lm"), family_images("perception-lm")
    inputs = family_inputs(loaded, images)
    assert tuple(inputs["pixel_values"].shape[:2]) == (1, sum(TILES))  # packed tiles
    assert loaded.architecture.adapter.sample_tiles(inputs, loaded.layout) == TILES
    with pytest.raises(ValueError, match="stack"):  # what the processor alone does
        loaded.processor(
            images=images, text=[f"{loaded.processor.image_token}{p}" for p in FAMILY_PROMPTS],
            padding=True, return_tensors="pt",
        )  # fmt: skip


def test_perception_lm_tiles_start_with_a_class_token(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("perception-lm"), family_images("perception-lm")
    assert loaded.layout.cls_towers == ("model.vision_tower",)
    tokens = token_rows(loaded, BLOCK, images)
    per_tile = hooked(loaded, images[:1], [BLOCK]).outputs[BLOCK].shape[1]  # 1 + patches
    for sample, expected in enumerate(TILES):
        rows = tokens.samples == sample
        cls = tokens.token_index[rows][tokens.token_role[rows] == TokenRole.CLS]
        assert cls.tolist() == [tile * per_tile for tile in range(expected)]


def test_perception_lm_projector_has_no_class_token(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("perception-lm")
    tokens = token_rows(loaded, PROJECTOR, family_images("perception-lm"))
    assert not (tokens.token_role == TokenRole.CLS).any()
    assert [int((tokens.samples == s).sum()) for s in range(3)] == [t * 4 for t in TILES]


def test_perception_lm_tiles_do_not_lie_on_one_patch_grid(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("perception-lm")
    inputs = family_inputs(loaded, family_images("perception-lm"))
    with pytest.raises(PatchGridError, match="thumbnail"):
        loaded.architecture.adapter.patch_cells(PROJECTOR, 28, inputs, loaded.layout, 0)


def test_building_perception_lm_without_timm_fails_with_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", missing_modules("timm"))
    with pytest.raises(MissingExtraError, match=r'pip install -e "\.\[perception-lm\]"'):
        build_tiny("perception-lm", tmp_path / "plm")
    assert not (tmp_path / "plm").exists()


def test_a_rows_images_keep_their_own_tiles_and_image_tokens(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """The template puts a row's `<|image|>` placeholders side by side, so the images' runs of
    image tokens touch; each image's share is its tiles times the tokens per tile."""
    loaded, images = load_family("perception-lm"), family_images("perception-lm")
    adapter = loaded.architecture.adapter
    rows = [images[1:], [], images[:1]]  # 7 + 5 tiles, none, 7 tiles
    inputs = adapter.prepare_on(loaded.processor, rows, ["a", "b", "c"], "cpu", torch.float32)
    assert tuple(inputs["pixel_values"].shape[:2]) == (1, 19)
    assert adapter.sample_tiles(inputs, loaded.layout) == [12, 0, 7]
    index = adapter.text_image_index(inputs, adapter.text_roles(inputs, loaded.layout))
    labels = index[0][index[0] >= 0].tolist()
    assert [labels.count(k) for k in range(2)] == [7 * 4, 5 * 4]
    assert not (index[1] >= 0).any()
    tokens = token_rows_of(loaded, BLOCK, rows)
    mine = tokens.samples == 0
    assert tokens.image_index is not None and tokens.tile is not None
    tiles = [len(set(tokens.tile[mine & (tokens.image_index == k)].tolist())) for k in range(2)]
    assert tiles == [7, 5]


def token_rows_of(loaded: LoadedModel, module: str, rows: list[list[Image.Image]]) -> Pooled:
    ((_, tokens),) = capture_batch(loaded, rows, ["x"] * len(rows), [module], ["tokens"])
    return tokens
