"""Gemma3: the chat template writes the begin-of-image token, which the processor expands into
soft tokens; only the soft tokens (`config.image_token_id`, not the processor's
`image_token_id`) carry image roles, and each prompt takes exactly one image.

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from PIL import Image

from lens_assets.capture.adapters.base import Adapter
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
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


def test_gemma3_gets_one_image_per_prompt(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("gemma3"), family_images("gemma3")
    with pytest.raises(ValueError, match="number of"):  # a flat list is one prompt's images
        Adapter().prepare(loaded.processor, images, FAMILY_PROMPTS)
    inputs = family_inputs(loaded, images)
    assert inputs["pixel_values"].shape[0] == len(images)
    assert "token_type_ids" in forward_kwargs(loaded, images)
