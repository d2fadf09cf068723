"""Pixtral and Mistral3 (the Pixtral adapter): the tower packs every image's own patch grid
into one sequence, and its (and Mistral3's merged projector's) outputs come back one grid per
image, in raster order, with `[IMG_BREAK]`/`[IMG_END]` left as text.

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from PIL import Image
from transformers import LlavaConfig, PixtralVisionConfig

from lens_assets.capture.adapters import GENERIC, adapter_for, checkpoint_types
from lens_assets.capture.adapters.pixtral import PixtralAdapter
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import hooked, image_counts, image_token_counts, sequences

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
