"""Idefics3 and SmolVLM (the sub-image adapter): sub-images on the vision batch axis map back to
their images (padding sub-images never reach the tower), marker tokens stay text, and only an
unsplit image lies on one patch grid. A row's several images, side by side in the prompt, keep
their own sub-images and image tokens; a text-only row is all padding sub-images (the rows tests
are in tests/test_rows_extraction.py).

What every family does is in tests/test_families.py."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from PIL import Image

from lens_assets.analyses.patches import patch_grids
from lens_assets.capture.adapters.idefics3 import images_by_global_run
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.pooling import Pooled
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import FAMILY_PROMPTS, family_inputs, hooked, token_rows

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


# -- rows of several images (or none) ----------------------------------------------------------


def pairs_of(tokens: Pooled, sample: int) -> list[tuple[int, int]]:
    """A sample's (image, sub-image) pairs at its `tokens` rows, each once, in order."""
    assert tokens.tile is not None and tokens.image_index is not None
    rows = tokens.samples == sample
    pairs = zip(tokens.image_index[rows].tolist(), tokens.tile[rows].tolist(), strict=True)
    return list(dict.fromkeys(pairs))


def test_an_images_tokens_end_with_the_run_after_its_global_image_marker() -> None:
    """Runs of image tokens are sub-images; an image is its runs up to its global image's."""
    img, mark, glob = 9, 7, 8  # <image>; <row_i_col_j> or <fake_token_around_image>; <global-img>
    two_images = [1, mark, img, img, mark, img, img, glob, img, img, mark, glob, img, img, 2]
    assert images_by_global_run(torch.tensor(two_images), img, glob) == [6, 2]
    assert images_by_global_run(torch.tensor([1, 2, 3]), img, glob) == []


@pytest.mark.parametrize("name", FAMILIES)
def test_a_rows_images_keep_their_own_sub_images_and_image_tokens(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """Three images side by side in one prompt (10, 7 and 10 sub-images): every vision position
    names its image and its sub-image within it, and each image's LLM positions are as many as
    the processor gives that image alone."""
    loaded, row = load_family(name), family_images(name)
    adapter, layout = loaded.architecture.adapter, loaded.layout
    for module in BY_NAME[name].hook_points[:2]:
        ((_, tokens),) = capture_batch(loaded, [row], ["Which?"], [module], ["tokens"])
        expected = [(k, t) for k, count in enumerate(SUB_IMAGES) for t in range(count)]
        assert pairs_of(tokens, 0) == expected, module
    inputs = adapter.prepare_on(loaded.processor, [row], ["Which?"], loaded.device, loaded.dtype)
    index = adapter.text_image_index(inputs, adapter.text_roles(inputs, layout))[0]
    sizes = [count * loaded.processor.image_seq_len for count in SUB_IMAGES]
    assert index[index >= 0].tolist() == [k for k, size in enumerate(sizes) for _ in range(size)]


@pytest.mark.parametrize("name", FAMILIES)
def test_a_text_only_row_beside_image_rows_holds_only_padding_sub_images(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family(name), family_images(name)
    block = BY_NAME[name].hook_points[0]
    rows, prompts = [[], [images[1]]], ["Name a colour.", "Which?"]
    inputs = loaded.architecture.adapter.prepare(loaded.processor, rows, prompts)
    assert inputs["pixel_values"].shape[1] == SUB_IMAGES[1]
    assert not inputs["pixel_values"][0].any()  # all padding: the model drops it
    ((_, batched),) = capture_batch(loaded, rows, prompts, [block], ["tokens"])
    assert pairs_of(batched, 0) == [] and pairs_of(batched, 1) == [(0, t) for t in range(7)]
    ((_, alone),) = capture_batch(loaded, rows[1:], prompts[1:], [block], ["tokens"])
    torch.testing.assert_close(batched.vectors, alone.vectors)


@pytest.mark.parametrize("name", FAMILIES)
def test_unsplit_images_are_one_sub_image_each_with_tile_0(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """Without splitting every image is its global image alone: one vision row per image, so
    the rows equal the images (or the samples) in number, and each still names its image."""
    split, images = load_family(name), family_images(name)
    processor = copy.deepcopy(split.processor)
    processor.image_processor.do_image_splitting = False
    whole = replace(split, processor=processor)
    block = BY_NAME[name].hook_points[0]
    for rows in ([[images[0], images[1]], [images[2]]], [[image] for image in images]):
        prompts = FAMILY_PROMPTS[: len(rows)]
        ((_, tokens),) = capture_batch(whole, rows, prompts, [block], ["tokens"])
        for sample, row in enumerate(rows):
            assert pairs_of(tokens, sample) == [(k, 0) for k in range(len(row))]
