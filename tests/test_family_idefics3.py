"""Idefics3 and SmolVLM (the sub-image adapter): sub-images on the vision batch axis map back to
their images (padding sub-images never reach the tower), marker tokens stay text, and only an
unsplit image lies on one patch grid.

What every family does is in tests/test_families.py."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import pytest
from PIL import Image

from lens_assets.analyses.patches import patch_grids
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import family_inputs, hooked, token_rows

FAMILIES = ["idefics3", "smolvlm"]
# The family images (64x48, 40x72, 96x96) are cut into 3x3, 3x2 and 3x3 sub-images, plus a
# global image each.
SUB_IMAGES = [10, 7, 10]


@pytest.mark.parametrize("name", FAMILIES)
def test_padding_sub_images_never_reach_the_vision_tower(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family(name), family_images(name)
    block = BY_NAME[name].hook_points[0]
    run = hooked(loaded, images, [block])
    assert run.inputs["pixel_values"].shape[1] == max(SUB_IMAGES)  # padded to the largest
    assert "pixel_attention_mask" in run.inputs
    assert run.outputs[block].shape[0] == sum(SUB_IMAGES)


@pytest.mark.parametrize("name", FAMILIES)
def test_each_image_gets_exactly_its_own_sub_images(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family(name), family_images(name)
    for module in BY_NAME[name].hook_points[:2]:  # the tower block and the connector
        tokens = token_rows(loaded, module, images)
        for sample, expected in enumerate(SUB_IMAGES):
            tiles = tokens.tile[tokens.samples == sample]
            assert sorted(set(tiles.tolist())) == list(range(expected)), module


@pytest.mark.parametrize("name", FAMILIES)
def test_sub_image_markers_are_text_at_the_llm_layer(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, image = load_family(name), family_images(name)[:1]
    tokenizer = loaded.processor.tokenizer
    markers = {"<fake_token_around_image>", "<global-img>", "<row_1_col_1>", "<row_3_col_3>"}
    marker_ids = set(tokenizer.convert_tokens_to_ids(sorted(markers)))
    inputs = family_inputs(loaded, image)
    ids = inputs["input_ids"][0][inputs["attention_mask"][0].bool()]
    tokens = token_rows(loaded, BY_NAME[name].hook_points[-1], image)
    for position, role in zip(tokens.token_index.tolist(), tokens.token_role.tolist(), strict=True):
        if int(ids[position]) in marker_ids:
            assert role == TokenRole.TEXT
    assert marker_ids <= set(ids.tolist())  # the markers are there, one token each


@pytest.mark.parametrize("name", FAMILIES)
def test_image_tokens_are_sub_images_times_the_image_sequence_length(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family(name)
    inputs = family_inputs(loaded, family_images(name))
    per_sample = (inputs["input_ids"] == loaded.model.config.image_token_id).sum(dim=1)
    expected = [count * loaded.processor.image_seq_len for count in SUB_IMAGES]
    assert per_sample.tolist() == expected


@pytest.mark.parametrize("name", FAMILIES)
def test_only_an_unsplit_image_lies_on_one_patch_grid(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    split, image = load_family(name), family_images(name)[:1]
    layers = list(BY_NAME[name].hook_points)
    assert all(grid == {} for grid in patch_grids(split, image, "Hm?", layers))
    processor = copy.deepcopy(split.processor)
    processor.image_processor.do_image_splitting = False  # one square sub-image per image
    whole = replace(split, processor=processor)
    (grid,) = patch_grids(whole, image, "Hm?", layers)
    assert set(grid) == set(layers)
    assert len(grid[layers[0]].features) == 16  # the tower's 4x4 patches
    assert len(grid[layers[-1]].features) == 4  # 2x2 tokens after the pixel shuffle
