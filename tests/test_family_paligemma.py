"""PaliGemma: a plain prompt (no chat template) becomes each image's tokens, BOS, the prompt and
a newline; the processor's `labels` never reach forward, its `token_type_ids` do. A batch with a
text-only row, which the processor refuses, is built as the processor builds the others.

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from PIL import Image

from lens_assets.capture.adapters.paligemma import PALIGEMMA
from lens_assets.capture.loading import LoadedModel
from tests.conftest import FAMILY_PROMPTS, family_inputs, forward_kwargs


def test_paligemma_labels_never_reach_forward(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("paligemma"), family_images("paligemma")
    assert "labels" in loaded.processor(images=images[:1], text=["<image>Hm?"], return_tensors="pt")
    seen = forward_kwargs(loaded, images)
    assert "labels" not in seen
    assert "token_type_ids" in seen


def test_paligemma_prompt_is_image_tokens_bos_prompt_newline(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("paligemma")
    tokenizer = loaded.processor.tokenizer
    inputs = family_inputs(loaded, family_images("paligemma"))
    tokens = loaded.model.config.text_config.num_image_tokens
    for row, mask, prompt in zip(
        inputs["input_ids"], inputs["attention_mask"], FAMILY_PROMPTS, strict=True
    ):
        real = row[mask.bool()]
        assert (real[:tokens] == loaded.layout.image_token_id).all()
        assert int(real[tokens]) == tokenizer.bos_token_id
        assert tokenizer.decode(real[tokens + 1 :]) == f"{prompt}\n"


def test_paligemma_row_of_two_images_then_bos_prompt_newline(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("paligemma"), family_images("paligemma")
    adapter, tokenizer = loaded.architecture.adapter, loaded.processor.tokenizer
    inputs = adapter.prepare_on(
        loaded.processor, [images[:2], images[2:]], FAMILY_PROMPTS[:2], loaded.device, loaded.dtype
    )
    assert inputs["pixel_values"].shape[0] == 3
    tokens = loaded.model.config.text_config.num_image_tokens
    real = inputs["input_ids"][0][inputs["attention_mask"][0].bool()]
    assert (real[: 2 * tokens] == loaded.layout.image_token_id).all()
    assert tokenizer.decode(real[2 * tokens :]) == f"{tokenizer.bos_token}{FAMILY_PROMPTS[0]}\n"
    index = adapter.text_image_index(inputs, adapter.text_roles(inputs, loaded.layout))
    assert index[0][: 2 * tokens].tolist() == [0] * tokens + [1] * tokens


def test_paligemma_text_only_rows_are_built_as_the_processor_builds_image_rows(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """The processor refuses a batch without images (and misplaces BOS in a prompt without
    `<image>` beside one with), so such batches are built by hand: exactly the processor's
    inputs for image rows, and BOS, the prompt and a newline for a row without images."""
    loaded, images = load_family("paligemma"), family_images("paligemma")
    processor, tokenizer = loaded.processor, loaded.processor.tokenizer
    with pytest.raises(ValueError, match="images"):
        processor(text=["Hm?"], return_tensors="pt")
    rows = [images[:2], images[2:]]
    by_processor = PALIGEMMA.prepare(processor, rows, FAMILY_PROMPTS[:2])
    by_hand = PALIGEMMA.prepare_with_text_only(processor, rows, FAMILY_PROMPTS[:2])
    assert by_hand.keys() == by_processor.keys()
    for key, value in by_processor.items():
        assert torch.equal(by_hand[key], value), key
    mixed = PALIGEMMA.prepare(processor, [images[:1], []], FAMILY_PROMPTS[:2])
    assert mixed["pixel_values"].shape[0] == 1
    text_only = mixed["input_ids"][1][mixed["attention_mask"][1].bool()]
    assert tokenizer.decode(text_only) == f"{tokenizer.bos_token}{FAMILY_PROMPTS[1]}\n"
    assert not mixed["token_type_ids"].any()  # all prefix: attended bidirectionally
    assert "pixel_values" not in PALIGEMMA.prepare(processor, [[]], ["Hm?"])
