"""Batching is exact: a vector does not depend on the batch it was computed in."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch
from PIL import Image

from lens_assets.capture.adapters.base import to_device
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import ALL_POOLINGS, ARCHITECTURES, HOOK_POINTS, PROMPTS

Key = tuple[int, str, str, int]


def collect(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    batch_size: int,
) -> dict[Key, torch.Tensor]:
    """Every stored vector, keyed by (sample, layer, pooling, token index)."""
    vectors: dict[Key, torch.Tensor] = {}
    for start in range(0, len(images), batch_size):
        pieces = capture_batch(
            loaded,
            images[start : start + batch_size],
            prompts[start : start + batch_size],
            HOOK_POINTS[loaded.name],
            ALL_POOLINGS,
        )
        for layer, pooled in pieces:
            index = pooled.token_index if pooled.token_index is not None else None
            for row, sample in enumerate(pooled.samples.tolist()):
                position = int(index[row]) if index is not None else -1
                key = (start + sample, layer, pooled.pooling, position)
                assert key not in vectors, f"duplicate vector for {key}"
                vectors[key] = pooled.vectors[row].float().clone()
    return vectors


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_batch_of_four_equals_batch_of_one(
    architecture: str,
    load_tiny: Callable[[str], LoadedModel],
    images: list[Image.Image],
) -> None:
    loaded = load_tiny(architecture)
    batched = collect(loaded, images, PROMPTS, batch_size=4)
    single = collect(loaded, images, PROMPTS, batch_size=1)

    assert batched.keys() == single.keys()
    worst = max(
        float((batched[k] - single[k]).norm() / single[k].norm().clamp_min(1e-12)) for k in single
    )
    assert worst <= 1e-4, f"largest relative error {worst:.2e}"
    # every hook point produced vectors for every image
    for layer in HOOK_POINTS[architecture]:
        assert {k[0] for k in single if k[1] == layer} == set(range(len(images)))


def test_qwen2_vl_images_of_different_sizes_get_different_numbers_of_image_tokens(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("qwen2-vl")
    pieces = capture_batch(loaded, images, PROMPTS, ["model.visual.blocks.1"], ["tokens"])
    ((_, tokens),) = pieces
    per_image = torch.bincount(tokens.samples, minlength=len(images)).tolist()
    inputs = loaded.architecture.adapter.prepare(loaded.processor, images, PROMPTS)
    expected = inputs["image_grid_thw"].prod(dim=1).tolist()
    assert per_image == expected  # packed patches split back per image, none lost
    assert len(set(per_image)) > 1


@pytest.mark.parametrize("architecture", ["llava", "qwen2-vl"])
def test_image_token_roles_are_the_positions_of_the_image_token(
    architecture: str, load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny(architecture)
    language_layer = HOOK_POINTS[architecture][-1]
    pieces = dict(capture_batch(loaded, images, PROMPTS, [language_layer], ["tokens"]))
    tokens = pieces[language_layer]
    adapter = loaded.architecture.adapter
    inputs = to_device(
        adapter.prepare(loaded.processor, images, PROMPTS), loaded.device, loaded.dtype
    )
    image_token_id = loaded.model.config.image_token_id
    for sample in range(len(images)):
        mask = inputs["attention_mask"][sample].bool()
        ids = inputs["input_ids"][sample][mask]
        expected = (ids == image_token_id).nonzero().flatten().tolist()
        rows = tokens.samples == sample
        roles = tokens.token_role[rows]
        positions = tokens.token_index[rows][roles == TokenRole.IMAGE].tolist()
        assert positions == expected
        assert len(expected) > 0
        assert int(rows.sum()) == len(ids)  # one row per real token, pads dropped


def test_vision_tower_marks_its_class_token(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("llava")
    layer = "model.vision_tower.encoder.layers.1"
    ((_, tokens),) = capture_batch(loaded, images[:2], PROMPTS[:2], [layer], ["tokens"])
    first = tokens.token_role[tokens.samples == 0]
    assert first[0] == TokenRole.CLS
    assert bool((first[1:] == TokenRole.IMAGE).all())
    # the projector drops the class token: every position is an image patch
    ((_, projected),) = capture_batch(
        loaded, images[:2], PROMPTS[:2], ["model.multi_modal_projector"], ["tokens"]
    )
    assert bool((projected.token_role == TokenRole.IMAGE).all())


def test_a_batchs_text_positions_are_computed_once_and_never_reused_for_another_batch(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    """Every LLM layer of a batch reads the same roles; the next batch gets its own."""
    loaded = load_tiny("llava")
    adapter, layout = loaded.architecture.adapter, loaded.layout
    first = adapter.prepare_on(loaded.processor, images[:2], PROMPTS[:2], "cpu", torch.float32)
    roles, index = adapter.text_positions(first, layout)
    assert adapter.text_positions(first, layout)[0] is roles  # the memo, not a recount
    second = adapter.prepare_on(loaded.processor, images[:1], ["a longer question here?"],
                                "cpu", torch.float32)  # fmt: skip
    other, _ = adapter.text_positions(second, layout)
    assert other is not roles and torch.equal(other, adapter.text_roles(second, layout))
    assert torch.equal(index, adapter.text_image_index(first, adapter.text_roles(first, layout)))
