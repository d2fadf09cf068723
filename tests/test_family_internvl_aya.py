"""InternVL and Aya-Vision (the dynamic-tile adapter): an image's crops and thumbnail sit on the
vision batch axis, numbered per image in the tile column (which reaches the warehouse: see
tests/test_families.py); InternVL keeps a class token per tile, and Aya's projector output is
channel-last.

What every family does (right padding where the processors pad left included) is in
tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from PIL import Image

from lens_assets.capture.adapters.base import PatchGridError
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import family_inputs, hooked, image_rows, sequences, token_rows

# The family images: 3 crops + thumbnail (4 tiles: square position counts), 2 crops +
# thumbnail, and one tile (the image resized whole).
FAMILIES = ["internvl", "aya-vision"]
TILES = [4, 3, 1]


@pytest.mark.parametrize("name", FAMILIES)
def test_tiles_per_image_equal_the_processors_count(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family(name), family_images(name)
    tokens = token_rows(loaded, BY_NAME[name].hook_points[0], images)
    expected = [
        int(loaded.processor.image_processor(images=[image], return_tensors="pt")["num_patches"])
        for image in images
    ]
    assert expected == TILES
    assert tokens.tile is not None
    got = [int(tokens.tile[tokens.samples == s].max()) + 1 for s in range(len(images))]
    assert got == expected


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("point", [0, 1])  # the vision block and the projector
def test_tile_column_numbers_an_images_tiles_in_order_with_equal_lengths(
    name: str,
    point: int,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family(name), family_images(name)
    tokens = token_rows(loaded, BY_NAME[name].hook_points[point], images)
    assert tokens.tile is not None
    for sample in range(len(images)):
        tiles = tokens.tile[tokens.samples == sample]
        count = int(tiles.max()) + 1
        per_tile = len(tiles) // count
        expected = torch.arange(count).repeat_interleave(per_tile)
        assert tiles.tolist() == expected.tolist()


def test_internvl_marks_the_cls_position_of_every_tile(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("internvl")
    block = BY_NAME["internvl"].hook_points[0]
    run = hooked(loaded, family_images("internvl"), [block])
    seq = sequences(loaded, run, block)
    assert seq.roles is not None and seq.tiles is not None
    per_tile = run.outputs[block].shape[1]  # CLS + patches
    for sample, tiles in enumerate(TILES):
        roles = seq.roles[sample][: tiles * per_tile]
        assert (roles == TokenRole.CLS).nonzero().flatten().tolist() == list(
            range(0, tiles * per_tile, per_tile)
        )


@pytest.mark.parametrize("name", FAMILIES)
def test_projector_rows_are_the_llm_image_embeddings_in_order(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """Aya's projector output is (tiles, h, w, dim) channel-last: each tile's h*w positions
    in raster order, tiles in turn, are the vectors at the image tokens of the LLM."""
    loaded, images = load_family(name), family_images(name)
    projector = BY_NAME[name].hook_points[1]
    run = hooked(loaded, images, [projector], llm_inputs=True)
    seq = sequences(loaded, run, projector)
    width = loaded.model.config.text_config.hidden_size
    assert seq.hidden.shape[-1] == width
    for sample in range(len(images)):
        expected = run.image_embeddings(loaded.layout.image_token_id, sample)
        torch.testing.assert_close(image_rows(seq, sample), expected)


def test_aya_projector_output_is_channel_last(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("aya-vision")
    projector = BY_NAME["aya-vision"].hook_points[1]
    run = hooked(loaded, family_images("aya-vision"), [projector])
    tiles = len(run.inputs["pixel_values"])
    side = loaded.processor.img_size // loaded.processor.patch_size
    width = loaded.model.config.text_config.hidden_size
    assert tuple(run.outputs[projector].shape) == (tiles, side, side, width)


@pytest.mark.parametrize("name", FAMILIES)
def test_patch_cells_place_a_single_tile_image_on_its_grid(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family(name), family_images(name)
    adapter = loaded.architecture.adapter
    single = 2  # the 32x32 image: one tile, the image resized whole
    for point in range(2):
        module = BY_NAME[name].hook_points[point]
        run = hooked(loaded, images, [module])
        count = len(image_rows(sequences(loaded, run, module), single))
        cells = adapter.patch_cells(module, count, run.inputs, loaded.layout, single)
        side = int(count**0.5)
        assert (cells.rows, cells.cols) == (side, side)
        assert cells.cells.tolist() == [[r, c] for r in range(side) for c in range(side)]


@pytest.mark.parametrize("name", FAMILIES)
def test_patch_cells_refuse_several_tiles_even_when_the_count_is_square(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family(name)
    adapter = loaded.architecture.adapter
    inputs = family_inputs(loaded, family_images(name))
    language_layer = BY_NAME[name].hook_points[-1]
    count = int((inputs["input_ids"][0] == loaded.layout.image_token_id).sum())
    assert count == 16  # 4 tiles x 4 tokens: a 4x4 square by coincidence
    with pytest.raises(PatchGridError, match="4 tiles"):
        adapter.patch_cells(language_layer, count, inputs, loaded.layout, 0)
