"""BLIP-2 and InstructBLIP (the query adapter): a fixed number of Q-Former query tokens per
image before the text, never placed on patches; InstructBLIP's Q-Former also reads the
instruction, right-padded whatever the prompt's padding side. A row without an image runs the
language model on its prompt alone, also beside rows with one.

What every family does (its adapter, size, batch independence, image roles) is in
tests/test_families.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from PIL import Image

from lens_assets.analyses.behaviour import padding_side
from lens_assets.analyses.patches import patch_grids
from lens_assets.capture.extraction import capture_batch
from lens_assets.capture.families import BY_NAME
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
from tests.conftest import (
    FAMILY_PROMPTS,
    family_inputs,
    forward_kwargs,
    per_sample,
    token_rows,
)

QFORMER_LAYER = "qformer.encoder.layer.1"


@pytest.mark.parametrize("name", ["blip-2", "instructblip"])
def test_blip_prompts_carry_exactly_the_query_tokens_before_the_text(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family(name)
    queries = loaded.model.config.num_query_tokens
    ids = family_inputs(loaded, family_images(name))["input_ids"]
    image_token = loaded.layout.image_token_id
    assert image_token == loaded.model.config.image_token_id
    for row in ids:
        assert (row == image_token).sum() == queries  # no extra <image> from the prompt
        assert (row[:queries] == image_token).all()


@pytest.mark.parametrize("name", ["blip-2", "instructblip"])
def test_projection_outputs_are_per_image_query_tokens(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family(name), family_images(name)
    queries = loaded.model.config.num_query_tokens
    for _, roles, _ in per_sample(token_rows(loaded, "language_projection", images), len(images)):
        assert roles.tolist() == [TokenRole.IMAGE] * queries  # no class token, no text


def test_blip2_q_former_layers_hold_only_the_queries(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("blip-2"), family_images("blip-2")
    queries = loaded.model.config.num_query_tokens
    for _, roles, _ in per_sample(token_rows(loaded, QFORMER_LAYER, images), len(images)):
        assert roles.tolist() == [TokenRole.IMAGE] * queries


def test_instructblip_q_former_reads_the_instruction(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("instructblip"), family_images("instructblip")
    assert {"qformer_input_ids", "qformer_attention_mask"} <= forward_kwargs(loaded, images)
    queries = loaded.model.config.num_query_tokens
    lengths = family_inputs(loaded, images)["qformer_attention_mask"].sum(dim=1).tolist()
    rows = per_sample(token_rows(loaded, QFORMER_LAYER, images), len(images))
    for (_, roles, _), length in zip(rows, lengths, strict=True):
        assert roles.tolist() == [TokenRole.IMAGE] * queries + [TokenRole.TEXT] * length


def test_instructblip_q_former_tokens_do_not_depend_on_the_batch(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded, images = load_family("instructblip"), family_images("instructblip")
    batched = per_sample(token_rows(loaded, QFORMER_LAYER, images), len(images))
    for index, image in enumerate(images):
        alone = token_rows(loaded, QFORMER_LAYER, [image], [FAMILY_PROMPTS[index]])
        ((_, roles, single),) = per_sample(alone, 1)
        assert torch.equal(roles, batched[index][1])
        torch.testing.assert_close(single, batched[index][2], atol=1e-4, rtol=1e-4)


def test_instructblip_instruction_is_right_padded_while_the_prompt_is_left_padded(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("instructblip")
    with padding_side(loaded.processor, "left"):  # as generation pads
        inputs = family_inputs(loaded, family_images("instructblip"))
    queries = loaded.model.config.num_query_tokens
    assert not inputs["attention_mask"][:, queries].all()  # the LLM's text: pads first
    for mask in inputs["qformer_attention_mask"]:
        length = int(mask.sum())
        assert mask[:length].all() and not mask[length:].any()


def test_blip_query_tokens_are_not_placed_on_patches(
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    loaded = load_family("blip-2")
    vision, language = "vision_model.encoder.layers.1", "language_model.model.decoder.layers.1"
    layers = [vision, QFORMER_LAYER, "language_projection", language]
    grids = patch_grids(loaded, family_images("blip-2"), FAMILY_PROMPTS[0], layers)
    side = (
        loaded.model.config.vision_config.image_size // loaded.model.config.vision_config.patch_size
    )
    for grid in grids:
        assert set(grid) == {vision}  # the class token is not a patch either
        assert len(grid[vision].features) == side * side


# -- rows without an image ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["blip-2", "instructblip"])
def test_blip_a_text_only_row_is_the_prompt_alone_for_the_language_model(
    name: str, load_family: Callable[[str], LoadedModel]
) -> None:
    """Without an image the processor adds no queries and the language model runs on the
    prompt's own tokens, as the full forward would hand them to it."""
    loaded = load_family(name)
    adapter = loaded.architecture.adapter
    prompt = "Name a colour."
    inputs = adapter.prepare_on(loaded.processor, [[]], [prompt], "cpu", torch.float32)
    assert set(inputs) == {"input_ids", "attention_mask"}
    expected = loaded.processor.tokenizer(prompt, return_tensors="pt")["input_ids"]
    assert torch.equal(inputs["input_ids"], expected)
    with torch.inference_mode():
        logits = adapter.forward(loaded.model, inputs, {}).logits
        direct = loaded.model.language_model(input_ids=inputs["input_ids"]).logits
    torch.testing.assert_close(logits, direct)


@pytest.mark.parametrize("name", ["blip-2", "instructblip"])
def test_blip_text_only_rows_beside_image_rows_batch_exactly(
    name: str,
    load_family: Callable[[str], LoadedModel],
    family_images: Callable[[str], list[Image.Image]],
) -> None:
    """Only the rows with an image get queries and pixels; every row's vectors (the Q-Former
    with InstructBLIP's instruction included) are those it has alone."""
    loaded, images = load_family(name), family_images(name)
    adapter = loaded.architecture.adapter
    modules = [QFORMER_LAYER, "language_projection", *BY_NAME[name].hook_points[-1:]]
    rows = [[images[0]], [], [images[2]]]
    inputs = adapter.prepare_on(loaded.processor, rows, FAMILY_PROMPTS, "cpu", torch.float32)
    queries = loaded.model.config.num_query_tokens
    image_tokens = (inputs["input_ids"] == loaded.layout.image_token_id).sum(dim=1).tolist()
    assert image_tokens == [queries, 0, queries]
    assert len(inputs["pixel_values"]) == 2

    def vectors(batch: list[int]) -> dict[tuple, torch.Tensor]:
        pieces = capture_batch(
            loaded,
            [rows[i] for i in batch],
            [FAMILY_PROMPTS[i] for i in batch],
            modules,
            ["tokens", "mean_image", "mean_text", "last"],
        )
        found = {}
        for layer, pooled in pieces:
            for at, sample in enumerate(pooled.samples.tolist()):
                token = -1 if pooled.token_index is None else int(pooled.token_index[at])
                role = -1 if pooled.token_role is None else int(pooled.token_role[at])
                found[(batch[sample], layer, pooled.pooling, token, role)] = pooled.vectors[at]
        return found

    together = vectors([0, 1, 2])
    alone = {k: v for i in range(3) for k, v in vectors([i]).items()}
    assert together.keys() == alone.keys()
    assert not any(key[0] == 1 and key[1] in modules[:2] for key in together)
    for key, vector in alone.items():
        torch.testing.assert_close(together[key], vector, rtol=1e-4, atol=1e-5)
