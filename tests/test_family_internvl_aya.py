"""InternVL and Aya-Vision (the dynamic-tile adapter): an image's crops and thumbnail sit on the
vision batch axis, numbered per image in the tile column (which reaches the warehouse: see
tests/test_families.py) whatever else is in the batch; InternVL keeps a class token per tile,
and Aya's projector output is channel-last. A row's several images keep their own tiles and
image tokens (the rows tests are in tests/test_rows_extraction.py).

What every family does (right padding where the processors pad left included) is in
tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from PIL import Image

from lens_assets.capture.adapters.base import PatchGridError
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.pooling import Pooled
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import (
    FAMILY_PROMPTS,
    family_inputs,
    hooked,
    image_rows,
    sequences,
    token_rows,
)

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


# -- rows of several images (or none) ----------------------------------------------------------


def tiles_of(tokens: Pooled, sample: int) -> list[tuple[int, int]]:
    """A sample's (image, tile) pairs at its `tokens` rows, each once, in order."""
    assert tokens.tile is not None and tokens.image_index is not None
    rows = tokens.samples == sample
    pairs = zip(tokens.image_index[rows].tolist(), tokens.tile[rows].tolist(), strict=True)
    return list(dict.fromkeys(pairs))


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("point", [0, 1])  # the vision block and the projector
def test_a_one_tile_image_carries_tile_0_alone_and_beside_tiled_images(
    name: str,
    point: int,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """The tile column comes from the image's own tile count, not from the batch: the one-tile
    image's rows are tile 0 when it runs alone (one vision row per sample) and beside tiled
    images, with the same vectors."""
    loaded, images = load_family(name), family_images(name)
    module = BY_NAME[name].hook_points[point]
    batched = token_rows(loaded, module, images)
    alone = token_rows(loaded, module, images[2:], FAMILY_PROMPTS[2:])
    assert tiles_of(alone, 0) == tiles_of(batched, 2) == [(0, 0)]
    torch.testing.assert_close(alone.vectors, batched.vectors[batched.samples == 2])


@pytest.mark.parametrize("name", FAMILIES)
def test_a_rows_images_keep_their_own_tiles_and_image_tokens(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """A row of a 4-tile, a 1-tile and a 3-tile image: every vision position names its image
    and its tile within that image, and each image's LLM positions are as many as the
    processor gives that image alone (Aya's are one run per tile, so runs are not images)."""
    loaded, (wide, portrait, small) = load_family(name), family_images(name)
    row = [wide, small, portrait]
    adapter, layout = loaded.architecture.adapter, loaded.layout
    for module in BY_NAME[name].hook_points[:2]:
        ((_, tokens),) = capture_batch(loaded, [row], ["Which?"], [module], ["tokens"])
        expected = [(k, t) for k, tiles in enumerate([4, 1, 3]) for t in range(tiles)]
        assert tiles_of(tokens, 0) == expected, module
    inputs = adapter.prepare_on(loaded.processor, [row], ["Which?"], loaded.device, loaded.dtype)
    index = adapter.text_image_index(inputs, adapter.text_roles(inputs, layout))[0]
    alone = [
        adapter.prepare_on(loaded.processor, [[image]], ["x"], loaded.device, loaded.dtype)
        for image in row
    ]
    sizes = [int((a["input_ids"] == layout.image_token_id).sum()) for a in alone]
    assert index[index >= 0].tolist() == [k for k, size in enumerate(sizes) for _ in range(size)]
    assert (index >= 0).tolist() == (inputs["input_ids"][0] == layout.image_token_id).tolist()


@pytest.mark.parametrize("name", FAMILIES)
def test_vision_rows_equal_to_the_batch_size_by_chance_still_split_per_image(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """Two text-only rows beside a 3-tile image: three vision rows for a batch of three, which
    are all the image's tiles, not one row per sample."""
    loaded, images = load_family(name), family_images(name)
    block = BY_NAME[name].hook_points[0]
    prompts = ["Name a colour.", "Which?", "Name a shape."]
    ((_, batched),) = capture_batch(loaded, [[], [images[1]], []], prompts, [block], ["tokens"])
    assert batched.samples.unique().tolist() == [1]
    assert tiles_of(batched, 0) == [] and tiles_of(batched, 1) == [(0, t) for t in range(3)]
    ((_, alone),) = capture_batch(loaded, [[images[1]]], prompts[1:2], [block], ["tokens"])
    torch.testing.assert_close(batched.vectors, alone.vectors)
