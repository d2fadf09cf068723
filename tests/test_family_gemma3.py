"""Gemma3: the chat template writes one begin-of-image token per image, which the processor
expands into soft tokens; only the soft tokens (`config.image_token_id`, not the processor's
`image_token_id`) carry image roles, and the processor takes each prompt's images as its own
list (several, one or none).

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from PIL import Image

from lens_assets.capture.adapters.base import Adapter
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import PER_IMAGE, TokenRole
from tests.conftest import FAMILY_PROMPTS, family_inputs, forward_kwargs, per_sample, token_rows


def test_gemma3_image_roles_sit_on_soft_tokens_not_on_the_begin_of_image_token(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("gemma3"), family_images("gemma3")
    config = loaded.model.config
    assert loaded.layout.image_token_id == config.image_token_id
    assert loaded.processor.image_token_id == config.boi_token_id != config.image_token_id
    inputs = family_inputs(loaded, images)
    tokens = token_rows(loaded, BY_NAME["gemma3"].hook_points[-1], images)
    for sample, (index, roles, _) in enumerate(per_sample(tokens, len(images))):
        ids = inputs["input_ids"][sample][inputs["attention_mask"][sample].bool()]
        role_of = dict(zip(index.tolist(), roles.tolist(), strict=True))
        for marker in (config.boi_token_id, config.eoi_token_id):
            (position,) = (ids == marker).nonzero().flatten().tolist()
            assert role_of[position] == TokenRole.TEXT
        soft = (ids == config.image_token_id).nonzero().flatten().tolist()
        assert len(soft) == config.mm_tokens_per_image
        assert all(role_of[p] == TokenRole.IMAGE for p in soft)


def test_gemma3_images_go_to_the_processor_one_list_per_prompt(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("gemma3"), family_images("gemma3")
    with pytest.raises(ValueError, match="number of"):  # a flat list is one prompt's images
        Adapter().prepare(loaded.processor, images, FAMILY_PROMPTS)
    inputs = family_inputs(loaded, images)
    assert inputs["pixel_values"].shape[0] == len(images)
    assert "token_type_ids" in forward_kwargs(loaded, images)


def test_gemma3_row_of_two_images_beside_a_text_only_row(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """Each image gets its own begin-of-image token and soft tokens (in order, one image per
    run); a text-only row in the same batch has neither, and no pixels."""
    loaded, images = load_family("gemma3"), family_images("gemma3")
    adapter, config = loaded.architecture.adapter, loaded.model.config
    rows = [images[:2], [], images[2:]]
    inputs = adapter.prepare_on(loaded.processor, rows, FAMILY_PROMPTS, loaded.device, loaded.dtype)
    assert inputs["pixel_values"].shape[0] == 3
    index = adapter.text_image_index(inputs, adapter.text_roles(inputs, loaded.layout))
    tokens = config.mm_tokens_per_image
    for sample, row in enumerate(rows):
        ids = inputs["input_ids"][sample]
        assert int((ids == config.boi_token_id).sum()) == len(row)
        soft = ids == config.image_token_id
        assert torch.equal(inputs["token_type_ids"][sample] == 1, soft)  # bidirectional there
        labelled = index[sample][index[sample] >= 0].tolist()
        assert labelled == [k for k in range(len(row)) for _ in range(tokens)]
        assert torch.equal(index[sample] >= 0, soft)


def test_gemma3_projector_vectors_of_a_rows_image_are_that_image_alone(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("gemma3"), family_images("gemma3")
    projector = BY_NAME["gemma3"].hook_points[1]
    pieces = capture_batch(loaded, [[], images], ["Same?", "Same?"], [projector], [PER_IMAGE])
    for k, image in enumerate(images):
        ((_, alone),) = capture_batch(loaded, [[image]], ["Same?"], [projector], ["mean_image"])
        (pooled,) = [p for _, p in pieces if p.image_index is not None and p.image_index[0] == k]
        assert pooled.samples.tolist() == [1]
        torch.testing.assert_close(pooled.vectors[0], alone.vectors[0], rtol=1e-4, atol=1e-5)
