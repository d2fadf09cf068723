"""Pixtral, Mistral3, MiniCPM-V 4.6 and Molmo2: vision outputs that are packed, merged, sliced or
cropped come back one sequence per image, exactly as the model split them."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from PIL import Image
from transformers import BatchFeature, LlavaConfig, PixtralVisionConfig

from lens_assets.capture.adapters import GENERIC, adapter_for, checkpoint_types
from lens_assets.capture.adapters.base import PatchGridError, Sequences
from lens_assets.capture.adapters.minicpm_v import PackedViewsAdapter
from lens_assets.capture.adapters.molmo2 import CropsAndPooledTokensAdapter
from lens_assets.capture.adapters.pixtral import PixtralAdapter
from lens_assets.capture.extraction import to_device
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.hooks import capture, output_tensor
from lens_assets.capture.loading import LoadedModel, load_model
from lens_assets.capture.tiny import build_tiny
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import tiny_config

# (width, height): landscape, portrait, and a square large enough for MiniCPM-V to slice.
SIZES = [(64, 48), (40, 72), (96, 96)]
PROMPTS = ["What is it?", "Describe the shapes you can see in this picture.", "Hm?"]
LLM_LAYER = "model.language_model.layers.1"


def _image(width: int, height: int, shade: int) -> Image.Image:
    image = Image.new("RGB", (width, height), (shade, 200 - shade, 90))
    for x in range(0, width, 5):
        for y in range(0, height, 3):
            image.putpixel((x, y), ((x * 19) % 256, (y * 37) % 256, (x * y) % 256))
    return image


@pytest.fixture(scope="module")
def images() -> list[Image.Image]:
    return [_image(w, h, 60 * i) for i, (w, h) in enumerate(SIZES)]


@pytest.fixture(scope="module")
def load(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], LoadedModel]:
    root = tmp_path_factory.mktemp("packed-models")
    cache: dict[str, LoadedModel] = {}

    def loader(name: str) -> LoadedModel:
        if name not in cache:
            build_tiny(name, root / name)
            config = tiny_config(name, root, modules=list(BY_NAME[name].hook_points))
            cache[name] = load_model(config, name, root, device="cpu", dtype="float32")
        return cache[name]

    return loader


def _run(
    loaded: LoadedModel, modules: Sequence[str], images: Sequence[Image.Image]
) -> tuple[BatchFeature, dict[str, Sequences]]:
    """The batch's inputs and each module's output mapped back to the samples."""
    adapter = loaded.architecture.adapter
    inputs = to_device(
        adapter.prepare(loaded.processor, images, PROMPTS[: len(images)]),
        loaded.device,
        loaded.dtype,
    )
    with capture(loaded.model, modules) as store, torch.inference_mode():
        adapter.forward(loaded.model, inputs, {})
        seqs = {
            name: adapter.sequences(name, store.outputs[name], inputs, loaded.layout, len(images))
            for name in modules
        }
    return inputs, seqs


def _image_counts(seq: Sequences) -> list[int]:
    assert seq.roles is not None
    return (seq.roles == TokenRole.IMAGE).sum(dim=1).tolist()


def _image_tokens(inputs: BatchFeature, loaded: LoadedModel) -> list[int]:
    return (inputs["input_ids"] == loaded.layout.image_token_id).sum(dim=1).tolist()


# -- Pixtral and Mistral3 ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pixtral", "mistral3"])
def test_pixtral_checkpoints_select_the_pixtral_adapter(
    name: str, load: Callable[[str], LoadedModel]
) -> None:
    assert isinstance(load(name).architecture.adapter, PixtralAdapter)


def test_a_plain_llava_keeps_the_generic_adapter_and_a_pixtral_tower_does_not() -> None:
    assert adapter_for(*checkpoint_types(LlavaConfig())) is GENERIC
    pixtral = LlavaConfig(vision_config=PixtralVisionConfig())
    assert isinstance(adapter_for(*checkpoint_types(pixtral)), PixtralAdapter)


@pytest.mark.parametrize("name", ["pixtral", "mistral3"])
def test_tower_patches_per_image_are_its_processed_patch_grid(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load(name)
    block = BY_NAME[name].hook_points[0]
    inputs, seqs = _run(loaded, [block], images)
    patch = loaded.model.config.vision_config.patch_size
    expected = [(int(h) // patch) * (int(w) // patch) for h, w in inputs["image_sizes"]]
    assert len(set(expected)) > 1  # images of different sizes: a real split, not a reshape
    assert _image_counts(seqs[block]) == expected


def test_mistral3_projector_gives_one_token_per_merged_cell_and_per_img_token(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("mistral3")
    inputs, seqs = _run(loaded, ["model.multi_modal_projector"], images)
    cell = loaded.model.config.vision_config.patch_size * loaded.model.config.spatial_merge_size
    merged = [(int(h) // cell) * (int(w) // cell) for h, w in inputs["image_sizes"]]
    counts = _image_counts(seqs["model.multi_modal_projector"])
    assert counts == merged == _image_tokens(inputs, loaded)


def test_pixtral_batched_tower_rows_equal_each_image_alone(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("pixtral")
    block = BY_NAME["pixtral"].hook_points[0]
    _, batched = _run(loaded, [block], images)
    for index, image in enumerate(images):
        _, alone = _run(loaded, [block], [image])
        count = _image_counts(alone[block])[0]
        torch.testing.assert_close(
            batched[block].hidden[index, :count], alone[block].hidden[0, :count]
        )


def test_pixtral_patch_convolution_keeps_each_images_own_grid_out_of_the_padding(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("pixtral")
    inputs, seqs = _run(loaded, ["model.vision_tower.patch_conv"], images)
    patch = loaded.model.config.vision_config.patch_size
    expected = [(int(h) // patch) * (int(w) // patch) for h, w in inputs["image_sizes"]]
    assert _image_counts(seqs["model.vision_tower.patch_conv"]) == expected


def test_pixtral_row_break_and_end_tokens_are_text_in_the_llm(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("pixtral")
    inputs, seqs = _run(loaded, [LLM_LAYER], images)
    roles = seqs[LLM_LAYER].roles
    assert roles is not None
    for token in ("[IMG_BREAK]", "[IMG_END]"):
        where = inputs["input_ids"] == loaded.processor.tokenizer.convert_tokens_to_ids(token)
        assert where.any()
        assert (roles[where] == TokenRole.TEXT).all()


@pytest.mark.parametrize(
    ("name", "module"),
    [
        ("pixtral", "model.vision_tower.transformer.layers.1"),
        ("mistral3", "model.multi_modal_projector"),
        ("mistral3", LLM_LAYER),
    ],
)
def test_image_positions_lie_on_the_images_own_grid_in_raster_order(
    name: str, module: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load(name)
    inputs, seqs = _run(loaded, [module], images)
    config = loaded.model.config
    fold = config.vision_config.patch_size * (
        1 if module.startswith("model.vision_tower") else getattr(config, "spatial_merge_size", 1)
    )
    for sample, count in enumerate(_image_counts(seqs[module])):
        height, width = (int(v) for v in inputs["image_sizes"][sample])
        cells = loaded.architecture.adapter.patch_cells(
            module, count, inputs, loaded.layout, sample
        )
        assert (cells.rows, cells.cols) == (height // fold, width // fold)
        assert cells.cells[1].tolist() == ([0, 1] if cells.cols > 1 else [1, 0])


# -- MiniCPM-V 4.6 -------------------------------------------------------------------------


def test_minicpm_checkpoint_selects_the_packed_views_adapter(
    load: Callable[[str], LoadedModel],
) -> None:
    assert isinstance(load("minicpm-v").architecture.adapter, PackedViewsAdapter)


def test_minicpm_prompts_are_padded_on_the_right(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("minicpm-v")
    inputs = loaded.architecture.adapter.prepare(loaded.processor, images, PROMPTS)
    mask = inputs["attention_mask"]
    assert (mask[:, 0] == 1).all()
    assert (mask[:, :-1] >= mask[:, 1:]).all()  # no real token after a pad


def test_hooks_pack_a_list_of_per_view_tensors_and_keep_a_tuples_first() -> None:
    views = [torch.ones(4, 8), torch.zeros(3, 8)]
    assert output_tensor(views).shape == (7, 8)
    assert output_tensor((views[0], torch.ones(2, 2))) is views[0]


def test_minicpm_merger_gives_every_sample_its_prompts_image_tokens(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("minicpm-v")
    inputs, seqs = _run(loaded, ["model.merger"], images)
    assert _image_counts(seqs["model.merger"]) == _image_tokens(inputs, loaded)


def test_minicpm_sliced_image_has_one_tile_per_view(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("minicpm-v")
    block = BY_NAME["minicpm-v"].hook_points[0]
    inputs, seqs = _run(loaded, [block], images)
    views = len(inputs["target_sizes"])
    assert views > len(images)  # the large square image was sliced
    tiles = seqs[block].tiles
    assert tiles is not None
    per_sample = [len(set(t[t >= 0].tolist())) for t in tiles]
    assert per_sample[:2] == [1, 1] and per_sample[2] == views - 2


def test_minicpm_window_merger_folds_the_encoder_positions_by_four(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("minicpm-v")
    before, after = "model.vision_tower.encoder.layers.0", "model.vision_tower.encoder.layers.1"
    inputs, seqs = _run(loaded, [before, after], images[:2])  # unsliced: one view each
    patches = [int(h) * int(w) for h, w in inputs["target_sizes"]]
    assert _image_counts(seqs[before]) == patches
    assert _image_counts(seqs[after]) == [n // 4 for n in patches]


def test_minicpm_single_view_image_lies_on_its_folded_grid_and_a_sliced_one_does_not(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("minicpm-v")
    adapter = loaded.architecture.adapter
    inputs, seqs = _run(loaded, ["model.merger"], images)
    counts = _image_counts(seqs["model.merger"])
    rows, cols = (int(v) for v in inputs["target_sizes"][1])
    cells = adapter.patch_cells("model.merger", counts[1], inputs, loaded.layout, 1)
    assert (cells.rows, cells.cols) == (rows // 4, cols // 4)
    with pytest.raises(PatchGridError):
        adapter.patch_cells("model.merger", counts[2], inputs, loaded.layout, 2)


# -- Molmo2 --------------------------------------------------------------------------------


def test_molmo2_checkpoint_selects_the_crops_adapter(load: Callable[[str], LoadedModel]) -> None:
    assert isinstance(load("molmo2").architecture.adapter, CropsAndPooledTokensAdapter)


def test_molmo2_tower_rows_are_each_images_crops(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("molmo2")
    block = BY_NAME["molmo2"].hook_points[0]
    inputs, seqs = _run(loaded, [block], images)
    crops = inputs["image_num_crops"].tolist()
    per_crop = inputs["pixel_values"].shape[1]
    assert len(set(crops)) > 1
    assert _image_counts(seqs[block]) == [n * per_crop for n in crops]
    tiles = seqs[block].tiles
    assert tiles is not None
    assert [int(t.max()) + 1 for t in tiles] == crops


def test_molmo2_adapter_tokens_are_the_low_and_high_res_grids_and_the_im_patch_tokens(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("molmo2")
    inputs, seqs = _run(loaded, ["model.multi_modal_projector"], images)
    grids = [a * b + c * d for a, b, c, d in inputs["image_grids"].tolist()]
    counts = _image_counts(seqs["model.multi_modal_projector"])
    assert counts == grids == _image_tokens(inputs, loaded)
