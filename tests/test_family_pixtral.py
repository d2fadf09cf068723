"""Pixtral and Mistral3 (the Pixtral adapter): the tower packs every image's own patch grid
into one sequence, and its (and Mistral3's merged projector's) outputs come back one grid per
image, in raster order, laid end to end per row, with `[IMG_BREAK]`/`[IMG_END]` left as text.

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from PIL import Image
from transformers import BatchFeature, LlavaConfig, PixtralVisionConfig

from lens_assets.capture.adapters import GENERIC, adapter_for, checkpoint_types
from lens_assets.capture.adapters.base import PatchGridError
from lens_assets.capture.adapters.pixtral import PixtralAdapter
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.hooks import capture
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import (
    FAMILY_PROMPTS,
    Run,
    hooked,
    image_counts,
    image_rows,
    image_token_counts,
    sequences,
)

LLM_LAYER = "model.language_model.layers.1"
PROJECTOR = "model.multi_modal_projector"


def _patch_grid_sizes(loaded: LoadedModel, image_sizes: torch.Tensor, fold: int = 1) -> list[int]:
    """Cells per image: each processed image's patch grid, folded `fold` x `fold`."""
    cell = loaded.model.config.vision_config.patch_size * fold
    return [(int(h) // cell) * (int(w) // cell) for h, w in image_sizes]


def test_a_plain_llava_keeps_the_generic_adapter_and_a_pixtral_tower_does_not() -> None:
    assert adapter_for(*checkpoint_types(LlavaConfig())) is GENERIC
    pixtral = LlavaConfig(vision_config=PixtralVisionConfig())
    assert isinstance(adapter_for(*checkpoint_types(pixtral)), PixtralAdapter)


@pytest.mark.parametrize("name", ["pixtral", "mistral3"])
def test_tower_patches_per_image_are_its_processed_patch_grid(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family(name)
    block = BY_NAME[name].hook_points[0]
    run = hooked(loaded, family_images(name), [block])
    expected = _patch_grid_sizes(loaded, run.inputs["image_sizes"])
    assert len(set(expected)) > 1  # images of different sizes: a real split, not a reshape
    assert image_counts(sequences(loaded, run, block)) == expected


def test_mistral3_projector_gives_one_token_per_merged_cell_and_per_img_token(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("mistral3")
    run = hooked(loaded, family_images("mistral3"), [PROJECTOR])
    merge = loaded.model.config.spatial_merge_size
    merged = _patch_grid_sizes(loaded, run.inputs["image_sizes"], merge)
    counts = image_counts(sequences(loaded, run, PROJECTOR))
    assert counts == merged == image_token_counts(loaded, run.inputs)


def test_pixtral_batched_tower_rows_equal_each_image_alone(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("pixtral"), family_images("pixtral")
    block = BY_NAME["pixtral"].hook_points[0]
    batched = sequences(loaded, hooked(loaded, images, [block]), block)
    for index, image in enumerate(images):
        alone = sequences(loaded, hooked(loaded, [image], [block]), block)
        count = image_counts(alone)[0]
        torch.testing.assert_close(batched.hidden[index, :count], alone.hidden[0, :count])


def test_pixtral_patch_convolution_keeps_each_images_own_grid_out_of_the_padding(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, conv = load_family("pixtral"), "model.vision_tower.patch_conv"
    run = hooked(loaded, family_images("pixtral"), [conv])
    expected = _patch_grid_sizes(loaded, run.inputs["image_sizes"])
    assert image_counts(sequences(loaded, run, conv)) == expected


def test_pixtral_row_break_and_end_tokens_are_text_in_the_llm(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("pixtral")
    run = hooked(loaded, family_images("pixtral"), [LLM_LAYER])
    roles = sequences(loaded, run, LLM_LAYER).roles
    assert roles is not None
    for token in ("[IMG_BREAK]", "[IMG_END]"):
        where = run.inputs["input_ids"] == loaded.processor.tokenizer.convert_tokens_to_ids(token)
        assert where.any()
        assert (roles[where] == TokenRole.TEXT).all()


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("pixtral", "model.vision_tower.transformer.layers.1"),
        ("mistral3", PROJECTOR),
        ("mistral3", LLM_LAYER),
    ],
)
def test_image_positions_lie_on_the_images_own_grid_in_raster_order(
    name: str,
    module: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family(name)
    run = hooked(loaded, family_images(name), [module])
    config = loaded.model.config
    fold = config.vision_config.patch_size * (
        1 if module.startswith("model.vision_tower") else getattr(config, "spatial_merge_size", 1)
    )
    for sample, count in enumerate(image_counts(sequences(loaded, run, module))):
        height, width = (int(v) for v in run.inputs["image_sizes"][sample])
        cells = loaded.architecture.adapter.patch_cells(
            module, count, run.inputs, loaded.layout, sample
        )
        assert (cells.rows, cells.cols) == (height // fold, width // fold)
        assert cells.cells[1].tolist() == ([0, 1] if cells.cols > 1 else [1, 0])


def _prepared(loaded: LoadedModel, rows: list[list[Image.Image]]) -> BatchFeature:
    adapter = loaded.architecture.adapter
    prompts = FAMILY_PROMPTS[: len(rows)]
    return adapter.prepare_on(loaded.processor, rows, prompts, loaded.device, loaded.dtype)


def _hooked_rows(loaded: LoadedModel, rows: list[list[Image.Image]], module: str) -> Run:
    inputs = _prepared(loaded, rows)
    with capture(loaded.model, [module]) as store, torch.inference_mode():
        loaded.architecture.adapter.forward(loaded.model, inputs, {})
    return Run(inputs, dict(store.outputs))


@pytest.mark.parametrize("name", ["pixtral", "mistral3"])
def test_a_rows_img_tokens_split_per_image_by_its_size_not_by_runs(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """Row breaks cut each image's `[IMG]` tokens into several runs; each image's share is
    what the processor gives that image alone."""
    loaded, images = load_family(name), family_images(name)
    adapter = loaded.architecture.adapter
    inputs = _prepared(loaded, [images, []])
    index = adapter.text_image_index(inputs, adapter.text_roles(inputs, loaded.layout))
    alone = [image_token_counts(loaded, _prepared(loaded, [[image]]))[0] for image in images]
    assert len(set(alone)) > 1
    positions = (index[0] >= 0).nonzero().flatten()
    runs = 1 + int((positions.diff() != 1).sum())
    assert runs > len(images)  # the generic one-run-per-image split cannot apply
    assert index[0][positions].tolist() == [k for k, n in enumerate(alone) for _ in range(n)]
    assert (index[1] == -1).all()


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("pixtral", "model.vision_tower.patch_conv"),
        ("pixtral", "model.vision_tower.transformer.layers.1"),
        ("mistral3", PROJECTOR),
    ],
)
def test_a_rows_images_are_laid_end_to_end_each_as_it_is_alone(
    name: str,
    module: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family(name), family_images(name)
    rows = [[images[1]], [], [images[0], images[2]]]
    run = _hooked_rows(loaded, rows, module)
    seq = sequences(loaded, run, module)
    assert seq.image_index is not None
    assert image_counts(seq)[1] == 0 and (seq.image_index[1] == -1).all()
    for sample, row in enumerate(rows):
        for k, image in enumerate(row):
            alone = sequences(loaded, _hooked_rows(loaded, [[image]], module), module)
            mine = seq.hidden[sample][seq.image_index[sample] == k]
            torch.testing.assert_close(mine, image_rows(alone, 0), rtol=1e-4, atol=1e-5)
    with pytest.raises(PatchGridError, match="2 images"):
        loaded.architecture.adapter.patch_cells(module, 1, run.inputs, loaded.layout, 2)
