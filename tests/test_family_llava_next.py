"""LLaVA-NeXT and LLaVA-OneVision (the anyres adapter): an image's anyres tiles sit on the vision
batch axis, and the adapter gives every image exactly the tiles the model made of it. A row
of several images gives unequal runs of image tokens, one per image as the processor expanded
it (OneVision: one untiled tile per image of such a row), and rows of none run text only.

What every family does is in tests/test_families.py."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from PIL import Image

from lens_assets.capture.adapters.base import PatchGridError
from lens_assets.capture.adapters.llava_next import AnyresTileAdapter
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


# -- rows of several images, and rows of none --------------------------------------------------


def _row_images() -> list[Image.Image]:
    """Three images whose anyres expansions differ: a 1x2 grid, a 1x3 grid and a square."""
    sizes = [(64, 32), (96, 32), (96, 96)]
    return [family_image(w, h, 50 * k) for k, (w, h) in enumerate(sizes)]


def _labels(loaded: LoadedModel, adapter: AnyresTileAdapter, rows: list[list[Image.Image]]) -> list:
    inputs = adapter.prepare_on(
        loaded.processor, rows, ["Which differs?"] * len(rows), loaded.device, loaded.dtype
    )
    roles = adapter.text_roles(inputs, loaded.layout)
    index = adapter.text_image_index(inputs, roles)
    return [row[row >= 0].tolist() for row in index]


class _AdjacentImages(AnyresTileAdapter):
    """A chat template that puts a row's image placeholders side by side, with no text between
    them, as some checkpoints' templates do."""

    def prompt_text(self, processor: object, prompt: str, n_images: int = 1) -> str:
        return f"{processor.image_token * n_images}{prompt}"  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", FAMILIES)
def test_each_image_of_a_row_gets_its_own_unequal_run_of_image_tokens(
    name: str, load_family: Callable[[str], LoadedModel]
) -> None:
    """LLaVA-NeXT's images of different sizes give runs of different lengths, each as long as
    the processor made it; OneVision gives each image of a multi-image row one untiled tile,
    `num_image_tokens` plus a newline."""
    loaded, images = load_family(name), _row_images()
    processor = loaded.processor
    for adapter in (loaded.architecture.adapter, _AdjacentImages()):
        (labels,) = _labels(loaded, adapter, [images])
        sizes = [labels.count(k) for k in range(len(images))]
        assert labels == sorted(labels)  # image after image, in order
        if name == "llava-next":
            alone = [len(_labels(loaded, adapter, [[image]])[0]) for image in images]
            assert sizes == alone and len(set(sizes)) == len(sizes)
        else:
            assert sizes == [processor.num_image_tokens + 1] * len(images)


def test_adjacent_runs_of_unequal_images_are_not_split_equally(
    load_family: Callable[[str], LoadedModel],
) -> None:
    """Without text between the images, the runs touch: only the processor's own count per
    image tells where one image ends."""
    loaded, images = load_family("llava-next"), _row_images()[:2]
    adapter = _AdjacentImages()
    inputs = adapter.prepare_on(loaded.processor, [images], ["x"], loaded.device, loaded.dtype)
    positions = (inputs["input_ids"][0] == loaded.layout.image_token_id).nonzero()[:, 0]
    assert bool((positions.diff() == 1).all())  # one unbroken run for both images
    assert getattr(inputs, "lens_image_tokens", None) is not None
    (labels,) = _labels(loaded, adapter, [images])
    assert labels.count(0) != labels.count(1)


@pytest.mark.parametrize("name", FAMILIES)
def test_vision_rows_of_a_multi_image_row_are_each_images_own_tiles(
    name: str, load_family: Callable[[str], LoadedModel]
) -> None:
    """Every tile lands on its own image: LLaVA-NeXT tiles each image as it would alone,
    OneVision gives each image of a multi-image row a single tile, and an image's vectors do not
    depend on its companions or its place in the row."""
    loaded, (a, b, c) = load_family(name), _row_images()
    block = BY_NAME[name].hook_points[0]
    for rows in ([[a, b]], [[a, b], [c]]):  # alone, and beside a tiled one-image row
        ((_, pooled),) = capture_batch(loaded, rows, ["x"] * len(rows), [block], ["tokens"])
        assert pooled.image_index is not None and pooled.tile is not None
        mine = pooled.samples == 0
        tiles = [
            sorted(set(pooled.tile[mine & (pooled.image_index == k)].tolist())) for k in (0, 1)
        ]
        if name == "llava-next":
            assert [len(t) for t in tiles] == [_raw(loaded, [image]).shape[0] for image in (a, b)]
        else:
            assert tiles == [[0], [0]]  # one untiled tile per image, whatever the batch

    def image_mean(rows: list[Image.Image], k: int) -> torch.Tensor:
        pieces = capture_batch(loaded, [rows], ["x"], [block], ["mean_per_image"])
        (found,) = [p for _, p in pieces if p.image_index is not None and p.image_index[0] == k]
        return found.vectors[0]

    torch.testing.assert_close(image_mean([a, b], 0), image_mean([c, a], 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAMILIES)
def test_rows_of_different_image_counts_batch_exactly(
    name: str, load_family: Callable[[str], LoadedModel]
) -> None:
    """A text-only row, a two-image row and a one-image row in one batch give each row's vectors
    as they are alone, on the vision tower, the projector and the language model."""
    loaded, (a, b, c) = load_family(name), _row_images()
    modules = list(BY_NAME[name].hook_points)
    rows = [[], [a, b], [c]]
    prompts = ["Name a colour.", "Which is wider, the first or the second?", "Hm?"]
    poolings = ["mean_image", "mean_text", "last", "mean_per_image"]

    def vectors(batch: list[int]) -> dict[tuple, torch.Tensor]:
        pieces = capture_batch(
            loaded, [rows[i] for i in batch], [prompts[i] for i in batch], modules, poolings
        )
        found = {}
        for layer, pooled in pieces:
            for at, sample in enumerate(pooled.samples.tolist()):
                image = -1 if pooled.image_index is None else int(pooled.image_index[at])
                found[(batch[sample], layer, pooled.pooling, image)] = pooled.vectors[at]
        return found

    together = vectors([0, 1, 2])
    alone = {k: v for i in range(3) for k, v in vectors([i]).items()}
    assert together.keys() == alone.keys()
    assert not any(key[0] == 0 and key[1] in modules[:2] for key in together)  # no vision
    for key, vector in alone.items():
        torch.testing.assert_close(together[key], vector, rtol=1e-4, atol=1e-5)
