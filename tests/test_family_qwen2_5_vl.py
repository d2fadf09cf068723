"""Qwen2.5-VL (the windowed adapter): the vision tower runs its blocks in window order, and the
adapter restores raster order, so block rows, merger rows and patch cells line up with the
image tokens the LLM receives. Rows of several images (windows never cross images) are tested
with the other Qwen families in tests/test_family_qwen2_vl.py.

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image

from lens_assets.capture.adapters.qwen2_5_vl import (
    WindowedLayout,
    WindowedVisionAdapter,
    window_order,
)
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel
from tests.conftest import hooked, image_rows, sequences

# The family images (64x48, 40x72, 96x96) span several 2x2-token windows of the tiny tower.
NAME = "qwen2.5-vl"


def test_qwen2_5_vl_selects_the_windowed_adapter_with_the_towers_geometry(
    load_family: Callable[[str], LoadedModel],
) -> None:
    loaded = load_family(NAME)
    vision = loaded.model.config.vision_config
    assert isinstance(loaded.architecture.adapter, WindowedVisionAdapter)
    assert loaded.layout == WindowedLayout(
        image_token_id=loaded.model.config.image_token_id,
        tower="model.visual",
        patch_size=vision.patch_size,
        merge_size=vision.spatial_merge_size,
        window_size=vision.window_size,
    )


def test_qwen2_5_vl_window_order_is_the_towers_own(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    from transformers.vision_utils import get_vision_window_index

    loaded = load_family(NAME)
    layout = loaded.layout
    assert isinstance(layout, WindowedLayout)
    grid = hooked(loaded, family_images(NAME), []).inputs["image_grid_thw"]
    window = layout.window_size // layout.merge_size // layout.patch_size
    theirs, _ = get_vision_window_index(
        grid, layout.merge_size, layout.window_size, layout.patch_size
    )
    ours = window_order(grid, layout.merge_size, window)
    assert ours.tolist() == theirs.tolist()
    assert ours.tolist() != sorted(ours.tolist())  # the test images really span windows


def test_qwen2_5_vl_windowed_modules_are_the_blocks_the_merger_and_the_tower(
    load_family: Callable[[str], LoadedModel],
) -> None:
    loaded = load_family(NAME)
    adapter = loaded.architecture.adapter
    assert isinstance(adapter, WindowedVisionAdapter)
    windowed = ["model.visual", "model.visual.blocks.0", "model.visual.blocks.1.attn",
                "model.visual.merger", "model.visual.merger.mlp"]  # fmt: skip
    raster = ["model.visual.patch_embed", "model.visual.rotary_pos_emb",
              "model.language_model.layers.1"]  # fmt: skip
    assert all(adapter.is_windowed(name, loaded.layout) for name in windowed)
    assert not any(adapter.is_windowed(name, loaded.layout) for name in raster)


def test_qwen2_5_vl_merger_rows_are_the_llm_image_embeddings_in_order(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family(NAME), family_images(NAME)
    run = hooked(loaded, images, ["model.visual.merger"], llm_inputs=True)
    seq = sequences(loaded, run, "model.visual.merger")
    token = loaded.layout.image_token_id
    for sample in range(len(images)):
        expected = run.image_embeddings(token, sample)
        torch.testing.assert_close(image_rows(seq, sample), expected)


def test_qwen2_5_vl_block_rows_come_back_as_raster_merge_blocks(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """The last block's rows, restored, are what the merger folds into the LLM's tokens in
    raster order: consecutive merge_size**2 rows form one block, blocks in raster order."""
    loaded, images = load_family(NAME), family_images(NAME)
    last = f"model.visual.blocks.{loaded.model.config.vision_config.depth - 1}"
    run = hooked(loaded, images, [last], llm_inputs=True)
    seq = sequences(loaded, run, last)
    merger = loaded.model.model.visual.merger
    token = loaded.layout.image_token_id
    for sample in range(len(images)):
        with torch.inference_mode():
            merged = merger(image_rows(seq, sample))
        torch.testing.assert_close(merged, run.image_embeddings(token, sample))


def test_qwen2_5_vl_patch_cells_are_the_towers_own_patch_positions(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """The packed adapter's block-major cells are the (row, col) the tower's rotary embedding
    gives each patch before the window reordering, so once rows are restored (the test above)
    they sit on the right cells."""
    from transformers.vision_utils import get_vision_position_ids

    loaded, images = load_family(NAME), family_images(NAME)
    block = BY_NAME[NAME].hook_points[0]
    run = hooked(loaded, images, [block])
    seq = sequences(loaded, run, block)
    grid = run.inputs["image_grid_thw"]
    merge = loaded.model.config.vision_config.spatial_merge_size
    adapter = loaded.architecture.adapter
    for sample in range(len(images)):
        count = len(image_rows(seq, sample))
        cells = adapter.patch_cells(block, count, run.inputs, loaded.layout, sample)
        positions = get_vision_position_ids(grid[sample : sample + 1], merge)
        assert cells.cells.tolist() == positions.tolist()
