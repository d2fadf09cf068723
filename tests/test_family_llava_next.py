"""LLaVA-NeXT and LLaVA-OneVision (the anyres adapter): an image's anyres tiles sit on the vision
batch axis, and the adapter gives every image exactly the tiles the model made of it.

What every family does is in tests/test_families.py."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from PIL import Image

from lens_assets.capture.adapters.base import PatchGridError
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.hooks import capture
from lens_assets.capture.loading import LoadedModel
from tests.conftest import FAMILY_PROMPTS, family_image, family_inputs, hooked, token_rows

# The family images are a 1x2 grid, a 1x3 grid and a square, so tile counts differ per image.
FAMILIES = ["llava-next", "llava-onevision"]


def _raw(loaded: LoadedModel, images: list[Image.Image]) -> torch.Tensor:
    """The vision block's own output for these images, one row per tile of the tower's batch."""
    block = BY_NAME[loaded.architecture.name].hook_points[0]
    return hooked(loaded, images, [block]).outputs[block]


@pytest.mark.parametrize("name", FAMILIES)
def test_each_image_gets_as_many_tiles_as_the_model_made_of_it(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family(name), family_images(name)
    tokens = token_rows(loaded, BY_NAME[name].hook_points[0], images)
    own = [_raw(loaded, [image]).shape[0] for image in images]
    found = [len(set(tokens.tile[tokens.samples == s].tolist())) for s in range(len(images))]
    assert found == own
    assert len(set(own)) == len(own)  # the images really differ in tiles


@pytest.mark.parametrize("name", FAMILIES)
def test_a_tiles_token_rows_are_that_tiles_tower_output(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, square = load_family(name), family_images(name)[2:]
    tokens = token_rows(loaded, BY_NAME[name].hook_points[0], square, FAMILY_PROMPTS[2:])
    raw = _raw(loaded, square)
    for tile in range(raw.shape[0]):
        rows = tokens.vectors[tokens.tile == tile]
        torch.testing.assert_close(rows, raw[tile], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_mean_image_of_the_vision_block_averages_every_tiles_patches(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, wide = load_family(name), family_images(name)[1:2]
    block = BY_NAME[name].hook_points[0]
    ((_, pooled),) = capture_batch(loaded, wide, FAMILY_PROMPTS[1:2], [block], ["mean_image"])
    raw = hooked(loaded, wide, [block], FAMILY_PROMPTS[1:2]).outputs[block]
    patches = raw[:, 1:] if loaded.layout.cls_towers else raw  # a CLIP tower's CLS is no patch
    torch.testing.assert_close(pooled.vectors[0], patches.flatten(0, 1).mean(0))


@pytest.mark.parametrize("name", FAMILIES)
def test_the_projector_is_split_into_the_same_tiles_as_the_tower(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family(name), family_images(name)
    block, projector = BY_NAME[name].hook_points[:2]
    pieces = dict(capture_batch(loaded, images, FAMILY_PROMPTS, [block, projector], ["tokens"]))
    for sample in range(len(images)):
        tower, merged = (pieces[m].tile[pieces[m].samples == sample] for m in (block, projector))
        assert set(tower.tolist()) == set(merged.tolist())


def test_onevision_leaves_the_images_of_a_multi_image_sample_untiled(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("llava-onevision"), family_images("llava-onevision")
    adapter = loaded.architecture.adapter
    token = loaded.processor.image_token
    inputs = loaded.processor(
        images=[images[:2], images[2:]],
        text=[f"{token}{token} Which differs?", f"{token} What is it?"],
        padding=True,
        return_tensors="pt",
    )
    block = BY_NAME["llava-onevision"].hook_points[0]
    with capture(loaded.model, [block]) as store, torch.inference_mode():
        adapter.forward(loaded.model, inputs, {})
    counts = adapter.tile_counts(block, store.outputs[block].shape[0], inputs, loaded.layout, 2)
    assert counts[0] == 2  # one tile per image of the two-image sample
    assert counts[1] == _raw(loaded, images[2:]).shape[0]


def test_patch_cells_refuse_tiles_even_when_the_count_is_a_square(
    load_family: Callable[[str], LoadedModel],
) -> None:
    loaded = load_family("llava-onevision")
    adapter = loaded.architecture.adapter
    image = family_image(40, 72, 30)  # 7 tiles whose unpadded tokens come to 10 x 10
    inputs = family_inputs(loaded, [image])
    count = int((inputs["input_ids"] == loaded.layout.image_token_id).sum())
    assert math.isqrt(count) ** 2 == count
    layer = BY_NAME["llava-onevision"].hook_points[-1]
    with pytest.raises(PatchGridError, match="anyres tiles"):
        adapter.patch_cells(layer, count, inputs, loaded.layout, 0)
