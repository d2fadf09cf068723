"""PaliGemma: a plain prompt (no chat template) becomes the image tokens, BOS, the prompt and a
newline; the processor's `labels` never reach forward, its `token_type_ids` do.

What every family does is in tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

from PIL import Image

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
