"""LLaVA-NeXT and LLaVA-OneVision: an image's anyres tiles sit on the vision batch axis, and the
adapter gives every image exactly the tiles the model made of it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pytest
import torch
from PIL import Image

from lens_assets.capture.adapters.base import PatchGridError
from lens_assets.capture.adapters.llava_next import AnyresTileAdapter
from lens_assets.capture.extraction import capture_batch, to_device
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.hooks import capture
from lens_assets.capture.loading import LoadedModel, load_model
from lens_assets.capture.tiny import build_tiny
from tests.conftest import tiny_config

FAMILIES = ["llava-next", "llava-onevision"]
# (width, height): a 1x2 grid, a 1x3 grid and a square, so tile counts differ per image.
SIZES = [(64, 32), (96, 32), (96, 96)]
PROMPTS = ["What is it?", "Describe the shapes you can see.", "Hm?"]


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
    root = tmp_path_factory.mktemp("anyres-models")
    cache: dict[str, LoadedModel] = {}

    def loader(name: str) -> LoadedModel:
        if name not in cache:
            build_tiny(name, root / name)
            config = tiny_config(name, root, modules=list(BY_NAME[name].hook_points))
            cache[name] = load_model(config, name, root, device="cpu", dtype="float32")
        return cache[name]

    return loader


def _vision_block(name: str) -> str:
    return BY_NAME[name].hook_points[0]


def _raw(loaded: LoadedModel, module: str, images: Sequence[Image.Image]) -> torch.Tensor:
    """The module's own output for these images, one row per tile of the tower's batch."""
    adapter = loaded.architecture.adapter
    inputs = to_device(
        adapter.prepare(loaded.processor, images, PROMPTS[: len(images)]),
        loaded.device,
        loaded.dtype,
    )
    with capture(loaded.model, [module]) as store, torch.inference_mode():
        adapter.forward(loaded.model, inputs, {})
    return store.outputs[module]


@pytest.mark.parametrize("name", FAMILIES)
def test_the_checkpoint_selects_the_anyres_adapter(
    name: str, load: Callable[[str], LoadedModel]
) -> None:
    assert isinstance(load(name).architecture.adapter, AnyresTileAdapter)


@pytest.mark.parametrize("name", FAMILIES)
def test_each_image_gets_as_many_tiles_as_the_model_made_of_it(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load(name)
    block = _vision_block(name)
    ((_, tokens),) = capture_batch(loaded, images, PROMPTS, [block], ["tokens"])
    own = [_raw(loaded, block, [image]).shape[0] for image in images]
    found = [len(set(tokens.tile[tokens.samples == s].tolist())) for s in range(len(images))]
    assert found == own
    assert len(set(own)) == len(own)  # the images really differ in tiles


@pytest.mark.parametrize("name", FAMILIES)
def test_a_tiles_token_rows_are_that_tiles_tower_output(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load(name)
    block = _vision_block(name)
    ((_, tokens),) = capture_batch(loaded, images[2:], PROMPTS[2:], [block], ["tokens"])
    raw = _raw(loaded, block, images[2:])
    for tile in range(raw.shape[0]):
        rows = tokens.vectors[tokens.tile == tile]
        torch.testing.assert_close(rows, raw[tile], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_mean_image_of_the_vision_block_averages_every_tiles_patches(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load(name)
    block = _vision_block(name)
    ((_, pooled),) = capture_batch(loaded, images[1:2], PROMPTS[1:2], [block], ["mean_image"])
    raw = _raw(loaded, block, images[1:2])
    patches = raw[:, 1:] if loaded.layout.cls_towers else raw  # a CLIP tower's CLS is no patch
    torch.testing.assert_close(pooled.vectors[0], patches.flatten(0, 1).mean(0))


@pytest.mark.parametrize("name", FAMILIES)
def test_the_projector_is_split_into_the_same_tiles_as_the_tower(
    name: str, load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load(name)
    block, projector = BY_NAME[name].hook_points[:2]
    pieces = dict(capture_batch(loaded, images, PROMPTS, [block, projector], ["tokens"]))
    for sample in range(len(images)):
        tower, merged = (pieces[m].tile[pieces[m].samples == sample] for m in (block, projector))
        assert set(tower.tolist()) == set(merged.tolist())


def test_onevision_leaves_the_images_of_a_multi_image_sample_untiled(
    load: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load("llava-onevision")
    adapter = loaded.architecture.adapter
    token = loaded.processor.image_token
    inputs = loaded.processor(
        images=[images[:2], images[2:]],
        text=[f"{token}{token} Which differs?", f"{token} What is it?"],
        padding=True,
        return_tensors="pt",
    )
    block = _vision_block("llava-onevision")
    with capture(loaded.model, [block]) as store, torch.inference_mode():
        adapter.forward(loaded.model, inputs, {})
    counts = adapter.tile_counts(block, store.outputs[block].shape[0], inputs, loaded.layout, 2)
    assert counts[0] == 2  # one tile per image of the two-image sample
    assert counts[1] == _raw(loaded, block, images[2:]).shape[0]


def test_patch_cells_refuse_tiles_even_when_the_count_is_a_square(
    load: Callable[[str], LoadedModel],
) -> None:
    loaded = load("llava-onevision")
    adapter = loaded.architecture.adapter
    image = _image(40, 72, 30)  # 7 tiles whose unpadded tokens come to 10 x 10
    inputs = adapter.prepare(loaded.processor, [image], PROMPTS[:1])
    count = int((inputs["input_ids"] == loaded.layout.image_token_id).sum())
    assert math.isqrt(count) ** 2 == count
    layer = BY_NAME["llava-onevision"].hook_points[-1]
    with pytest.raises(PatchGridError, match="anyres tiles"):
        adapter.patch_cells(layer, count, inputs, loaded.layout, 0)
