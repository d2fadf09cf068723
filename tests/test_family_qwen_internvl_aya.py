"""Qwen2.5-VL, Qwen3-VL, InternVL and Aya-Vision: what their adapters do beyond the generic
path, checked on tiny checkpoints of the real architectures.

Qwen2.5-VL's tower runs in window order and the adapter restores raster order; Qwen3-VL needs
`mm_token_type_ids` in forward and has DeepStack mergers; InternVL and Aya-Vision put dynamic
tiles on the vision batch axis, pad prompts on the left unless told otherwise, and Aya's
projector output is channel-last."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import BatchFeature

from lens_assets.capture.adapters.base import PatchGridError, Sequences
from lens_assets.capture.adapters.internvl_aya import DynamicTileAdapter
from lens_assets.capture.adapters.qwen2_5_vl import (
    WindowedLayout,
    WindowedVisionAdapter,
    window_order,
)
from lens_assets.capture.extraction import capture_batch, to_device
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.hooks import capture
from lens_assets.capture.loading import LoadedModel, load_model
from lens_assets.capture.tiny import build_tiny
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import tiny_config

TILED = ["internvl", "aya-vision"]
# Qwen: sizes that span several 2x2-token windows of the tiny Qwen2.5-VL tower.
QWEN_SIZES = [(64, 48), (40, 72), (96, 96)]
# Tiled: 3 crops + thumbnail (4 tiles: square position counts), 2 crops + thumbnail, 1 tile.
TILED_SIZES = [(96, 32), (40, 72), (32, 32)]
PROMPTS = ["What is it?", "Describe the colours and shapes you can see in this picture.", "Hm?"]


def _image(width: int, height: int, shade: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (shade, 200 - shade, 90))
    for x in range(0, width, 5):
        for y in range(0, height, 3):
            image.putpixel((x, y), ((x * 19) % 256, (y * 37) % 256, (x * y) % 256))
    return image


@pytest.fixture(scope="module")
def qwen_images() -> list[Image.Image]:
    return [_image(w, h, 60 * i) for i, (w, h) in enumerate(QWEN_SIZES)]


@pytest.fixture(scope="module")
def tiled_images() -> list[Image.Image]:
    return [_image(w, h, 60 * i) for i, (w, h) in enumerate(TILED_SIZES)]


@pytest.fixture(scope="module")
def load(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], LoadedModel]:
    root = tmp_path_factory.mktemp("qwen-internvl-aya")
    cache: dict[str, LoadedModel] = {}

    def loader(name: str) -> LoadedModel:
        if name not in cache:
            build_tiny(name, root / name)
            config = tiny_config(name, root, modules=list(BY_NAME[name].hook_points))
            cache[name] = load_model(config, name, root, device="cpu", dtype="float32")
        return cache[name]

    return loader


@dataclass
class Run:
    """One hooked forward pass: the inputs, each module's raw output and what the LLM got."""

    inputs: BatchFeature
    outputs: dict[str, torch.Tensor]
    llm_inputs: torch.Tensor  # inputs_embeds the language model received

    def image_embeddings(self, image_token_id: int, sample: int) -> torch.Tensor:
        """The LLM's input vectors at a sample's image tokens, in sequence order."""
        mask = self.inputs["input_ids"][sample] == image_token_id
        return self.llm_inputs[sample][mask]


def _run(loaded: LoadedModel, images: Sequence[Image.Image], modules: Sequence[str]) -> Run:
    adapter = loaded.architecture.adapter
    inputs = to_device(
        adapter.prepare(loaded.processor, images, PROMPTS[: len(images)]),
        loaded.device,
        loaded.dtype,
    )
    seen: dict[str, torch.Tensor] = {}

    def keep_embeds(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen["inputs_embeds"] = kwargs["inputs_embeds"].detach()

    language_model = loaded.model.model.language_model
    handle = language_model.register_forward_pre_hook(keep_embeds, with_kwargs=True)
    try:
        with capture(loaded.model, modules) as store, torch.inference_mode():
            adapter.forward(loaded.model, inputs, {})
    finally:
        handle.remove()
    return Run(inputs, dict(store.outputs), seen["inputs_embeds"])


def _sequences(loaded: LoadedModel, run: Run, module: str) -> Sequences:
    adapter = loaded.architecture.adapter
    batch = len(run.inputs["input_ids"])
    return adapter.sequences(module, run.outputs[module], run.inputs, loaded.layout, batch)


def _image_rows(seq: Sequences, sample: int) -> torch.Tensor:
    assert seq.roles is not None
    return seq.hidden[sample][seq.roles[sample] == TokenRole.IMAGE]


# -- Qwen2.5-VL: windowed vision tower ------------------------------------------------------


def test_qwen2_5_vl_selects_the_windowed_adapter_with_the_towers_geometry(
    load: Callable[[str], LoadedModel],
) -> None:
    loaded = load("qwen2.5-vl")
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
    load: Callable[[str], LoadedModel], qwen_images: list[Image.Image]
) -> None:
    from transformers.vision_utils import get_vision_window_index

    loaded = load("qwen2.5-vl")
    layout = loaded.layout
    assert isinstance(layout, WindowedLayout)
    grid = _run(loaded, qwen_images, []).inputs["image_grid_thw"]
    window = layout.window_size // layout.merge_size // layout.patch_size
    theirs, _ = get_vision_window_index(
        grid, layout.merge_size, layout.window_size, layout.patch_size
    )
    ours = window_order(grid, layout.merge_size, window)
    assert ours.tolist() == theirs.tolist()
    assert ours.tolist() != sorted(ours.tolist())  # the test images really span windows


def test_qwen2_5_vl_windowed_modules_are_the_blocks_the_merger_and_the_tower(
    load: Callable[[str], LoadedModel],
) -> None:
    loaded = load("qwen2.5-vl")
    adapter = loaded.architecture.adapter
    assert isinstance(adapter, WindowedVisionAdapter)
    windowed = ["model.visual", "model.visual.blocks.0", "model.visual.blocks.1.attn",
                "model.visual.merger", "model.visual.merger.mlp"]  # fmt: skip
    raster = ["model.visual.patch_embed", "model.visual.rotary_pos_emb",
              "model.language_model.layers.1"]  # fmt: skip
    assert all(adapter.is_windowed(name, loaded.layout) for name in windowed)
    assert not any(adapter.is_windowed(name, loaded.layout) for name in raster)


def test_qwen2_5_vl_merger_rows_are_the_llm_image_embeddings_in_order(
    load: Callable[[str], LoadedModel], qwen_images: list[Image.Image]
) -> None:
    loaded = load("qwen2.5-vl")
    run = _run(loaded, qwen_images, ["model.visual.merger"])
    seq = _sequences(loaded, run, "model.visual.merger")
    token = loaded.layout.image_token_id
    for sample in range(len(qwen_images)):
        expected = run.image_embeddings(token, sample)
        torch.testing.assert_close(_image_rows(seq, sample), expected)


def test_qwen2_5_vl_block_rows_come_back_as_raster_merge_blocks(
    load: Callable[[str], LoadedModel], qwen_images: list[Image.Image]
) -> None:
    """The last block's rows, restored, are what the merger folds into the LLM's tokens in
    raster order: consecutive merge_size**2 rows form one block, blocks in raster order."""
    loaded = load("qwen2.5-vl")
    last = f"model.visual.blocks.{loaded.model.config.vision_config.depth - 1}"
    run = _run(loaded, qwen_images, [last])
    seq = _sequences(loaded, run, last)
    merger = loaded.model.model.visual.merger
    token = loaded.layout.image_token_id
    for sample in range(len(qwen_images)):
        with torch.inference_mode():
            merged = merger(_image_rows(seq, sample))
        torch.testing.assert_close(merged, run.image_embeddings(token, sample))


def test_qwen2_5_vl_patch_cells_are_the_towers_own_patch_positions(
    load: Callable[[str], LoadedModel], qwen_images: list[Image.Image]
) -> None:
    """The packed adapter's block-major cells are the (row, col) the tower's rotary embedding
    gives each patch before the window reordering, so once rows are restored (the test above)
    they sit on the right cells."""
    from transformers.vision_utils import get_vision_position_ids

    loaded = load("qwen2.5-vl")
    block = BY_NAME["qwen2.5-vl"].hook_points[0]
    run = _run(loaded, qwen_images, [block])
    seq = _sequences(loaded, run, block)
    grid = run.inputs["image_grid_thw"]
    merge = loaded.model.config.vision_config.spatial_merge_size
    adapter = loaded.architecture.adapter
    for sample in range(len(qwen_images)):
        count = len(_image_rows(seq, sample))
        cells = adapter.patch_cells(block, count, run.inputs, loaded.layout, sample)
        positions = get_vision_position_ids(grid[sample : sample + 1], merge)
        assert cells.cells.tolist() == positions.tolist()


# -- Qwen3-VL: DeepStack and mm_token_type_ids ---------------------------------------------


def test_qwen3_vl_forward_receives_the_mm_token_type_ids(
    load: Callable[[str], LoadedModel], qwen_images: list[Image.Image]
) -> None:
    loaded = load("qwen3-vl")
    seen: dict[str, Any] = {}

    def keep(_module: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        seen.update(kwargs)

    handle = loaded.model.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        run = _run(loaded, qwen_images, [])
    finally:
        handle.remove()
    is_image = run.inputs["input_ids"] == loaded.layout.image_token_id
    assert torch.equal(seen["mm_token_type_ids"].bool(), is_image)


def test_qwen3_vl_deepstack_merger_rows_split_per_image(
    load: Callable[[str], LoadedModel], qwen_images: list[Image.Image]
) -> None:
    """A DeepStack merger folds patches like the main merger: one row per image token."""
    loaded = load("qwen3-vl")
    module = "model.visual.deepstack_merger_list.0"
    run = _run(loaded, qwen_images, [module])
    seq = _sequences(loaded, run, module)
    with torch.inference_mode():
        features = loaded.model.model.get_image_features(
            run.inputs["pixel_values"], run.inputs["image_grid_thw"]
        )
    tokens = (run.inputs["input_ids"] == loaded.layout.image_token_id).sum(dim=1)
    for sample in range(len(qwen_images)):
        rows = _image_rows(seq, sample)
        assert len(rows) == int(tokens[sample])
        torch.testing.assert_close(rows, features.deepstack_features[0][sample])


# -- InternVL and Aya-Vision: dynamic tiles ------------------------------------------------


@pytest.mark.parametrize("name", TILED)
def test_tiled_families_select_the_dynamic_tile_adapter(
    name: str, load: Callable[[str], LoadedModel]
) -> None:
    assert isinstance(load(name).architecture.adapter, DynamicTileAdapter)


@pytest.mark.parametrize("name", TILED)
def test_prompts_are_padded_on_the_right(
    name: str, load: Callable[[str], LoadedModel], tiled_images: list[Image.Image]
) -> None:
    """The processor alone pads on the left; the adapter's inputs keep real tokens first."""
    loaded = load(name)
    adapter = loaded.architecture.adapter
    texts = [adapter.prompt_text(loaded.processor, p) for p in PROMPTS]
    own = loaded.processor(images=tiled_images, text=texts, padding=True, return_tensors="pt")
    assert not bool(own["attention_mask"][:, 0].all())  # the processor's default: left
    mask = adapter.prepare(loaded.processor, tiled_images, PROMPTS)["attention_mask"]
    assert bool(mask[:, 0].all())
    assert torch.equal(mask, mask.sort(dim=1, descending=True).values)


@pytest.mark.parametrize("name", TILED)
def test_tiles_per_image_equal_the_processors_count(
    name: str, load: Callable[[str], LoadedModel], tiled_images: list[Image.Image]
) -> None:
    loaded = load(name)
    block = BY_NAME[name].hook_points[0]
    ((_, tokens),) = capture_batch(loaded, tiled_images, PROMPTS, [block], ["tokens"])
    expected = [
        int(loaded.processor.image_processor(images=[image], return_tensors="pt")["num_patches"])
        for image in tiled_images
    ]
    assert expected == [4, 3, 1]
    assert tokens.tile is not None
    got = [int(tokens.tile[tokens.samples == s].max()) + 1 for s in range(len(tiled_images))]
    assert got == expected


@pytest.mark.parametrize("name", TILED)
@pytest.mark.parametrize("point", [0, 1])  # the vision block and the projector
def test_tile_column_numbers_an_images_tiles_in_order_with_equal_lengths(
    name: str, point: int, load: Callable[[str], LoadedModel], tiled_images: list[Image.Image]
) -> None:
    loaded = load(name)
    module = BY_NAME[name].hook_points[point]
    ((_, tokens),) = capture_batch(loaded, tiled_images, PROMPTS, [module], ["tokens"])
    assert tokens.tile is not None
    for sample in range(len(tiled_images)):
        tiles = tokens.tile[tokens.samples == sample]
        count = int(tiles.max()) + 1
        per_tile = len(tiles) // count
        expected = torch.arange(count).repeat_interleave(per_tile)
        assert tiles.tolist() == expected.tolist()


def test_internvl_marks_the_cls_position_of_every_tile(
    load: Callable[[str], LoadedModel], tiled_images: list[Image.Image]
) -> None:
    loaded = load("internvl")
    block = BY_NAME["internvl"].hook_points[0]
    run = _run(loaded, tiled_images, [block])
    seq = _sequences(loaded, run, block)
    assert seq.roles is not None and seq.tiles is not None
    per_tile = run.outputs[block].shape[1]  # CLS + patches
    for sample, tiles in enumerate([4, 3, 1]):
        roles = seq.roles[sample][: tiles * per_tile]
        assert (roles == TokenRole.CLS).nonzero().flatten().tolist() == list(
            range(0, tiles * per_tile, per_tile)
        )


@pytest.mark.parametrize("name", TILED)
def test_projector_rows_are_the_llm_image_embeddings_in_order(
    name: str, load: Callable[[str], LoadedModel], tiled_images: list[Image.Image]
) -> None:
    """Aya's projector output is (tiles, h, w, dim) channel-last: each tile's h*w positions
    in raster order, tiles in turn, are the vectors at the image tokens of the LLM."""
    loaded = load(name)
    projector = BY_NAME[name].hook_points[1]
    run = _run(loaded, tiled_images, [projector])
    seq = _sequences(loaded, run, projector)
    width = loaded.model.config.text_config.hidden_size
    assert seq.hidden.shape[-1] == width
    for sample in range(len(tiled_images)):
        expected = run.image_embeddings(loaded.layout.image_token_id, sample)
        torch.testing.assert_close(_image_rows(seq, sample), expected)


def test_aya_projector_output_is_channel_last(
    load: Callable[[str], LoadedModel], tiled_images: list[Image.Image]
) -> None:
    loaded = load("aya-vision")
    projector = BY_NAME["aya-vision"].hook_points[1]
    output = _run(loaded, tiled_images, [projector]).outputs[projector]
    tiles = len(_run(loaded, tiled_images, []).inputs["pixel_values"])
    side = loaded.processor.img_size // loaded.processor.patch_size
    width = loaded.model.config.text_config.hidden_size
    assert tuple(output.shape) == (tiles, side, side, width)


@pytest.mark.parametrize("name", TILED)
def test_patch_cells_place_a_single_tile_image_on_its_grid(
    name: str, load: Callable[[str], LoadedModel], tiled_images: list[Image.Image]
) -> None:
    loaded = load(name)
    adapter = loaded.architecture.adapter
    inputs = adapter.prepare(loaded.processor, tiled_images, PROMPTS)
    single = 2  # the 32x32 image: one tile, the image resized whole
    for point in range(2):
        module = BY_NAME[name].hook_points[point]
        seq = _sequences(loaded, _run(loaded, tiled_images, [module]), module)
        count = len(_image_rows(seq, single))
        cells = adapter.patch_cells(module, count, inputs, loaded.layout, single)
        side = int(count**0.5)
        assert (cells.rows, cells.cols) == (side, side)
        assert cells.cells.tolist() == [[r, c] for r in range(side) for c in range(side)]


@pytest.mark.parametrize("name", TILED)
def test_patch_cells_refuse_several_tiles_even_when_the_count_is_square(
    name: str, load: Callable[[str], LoadedModel], tiled_images: list[Image.Image]
) -> None:
    loaded = load(name)
    adapter = loaded.architecture.adapter
    inputs = adapter.prepare(loaded.processor, tiled_images, PROMPTS)
    language_layer = BY_NAME[name].hook_points[-1]
    count = int((inputs["input_ids"][0] == loaded.layout.image_token_id).sum())
    assert count == 16  # 4 tiles x 4 tokens: a 4x4 square by coincidence
    with pytest.raises(PatchGridError, match="4 tiles"):
        adapter.patch_cells(language_layer, count, inputs, loaded.layout, 0)
