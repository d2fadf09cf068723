"""The logit lens on real tiny LLaVA and Qwen2-VL checkpoints, checked against the models' own
logits and hidden states."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from PIL import Image

from lens_assets.analyses.answer_tokens import answer_token_id
from lens_assets.analyses.logit_lens import (
    LogitLensError,
    decoder_stack,
    layer_logits,
    logit_lens,
)
from lens_assets.capture.loading import LoadedModel

LAYER_0 = "model.language_model.layers.0"
LAYER_1 = "model.language_model.layers.1"
PROMPTS = ["Colour?", "Which colour is the largest shape in this picture, and where is it?"]


def pair(images: list[Image.Image]) -> list[Image.Image]:
    return [images[1], images[3]]


def own_outputs(loaded: LoadedModel, images: list[Image.Image], prompts: list[str]) -> Any:
    """The model's own forward pass, with every layer's hidden states, and the answer
    positions (right padding: the last real token)."""
    adapter = loaded.architecture.adapter
    inputs = adapter.prepare_on(loaded.processor, images, prompts, loaded.device, loaded.dtype)
    with torch.inference_mode():
        output = loaded.model(**inputs, output_hidden_states=True)
    return output, inputs["attention_mask"].sum(dim=1) - 1


def round_trip_labels(
    loaded: LoadedModel, prompt: str, token_ids: list[int]
) -> list[tuple[int, str]]:
    """(position, word) for the tokens whose decoded word, written as the answer to
    `prompt`, starts with them."""
    tokenizer = loaded.processor.tokenizer
    found = []
    for position, token in enumerate(token_ids):
        word = tokenizer.decode([token])
        if word.strip() and answer_token_id(loaded, prompt, word) == token:
            found.append((position, word))
    return found


@pytest.mark.parametrize("architecture", ["llava", "qwen2-vl"])
def test_last_layer_readout_equals_the_models_final_logits(
    architecture: str, load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny(architecture)
    readout = layer_logits(loaded, pair(images), PROMPTS)
    output, answers = own_outputs(loaded, pair(images), PROMPTS)
    final = output.logits[torch.arange(2), answers].float()
    assert readout.layers[-1] == LAYER_1
    torch.testing.assert_close(readout.logits[-1], final, rtol=1e-5, atol=1e-5)
    assert readout.logits[-1].argmax(-1).tolist() == final.argmax(-1).tolist()
    table = logit_lens(loaded, pair(images), PROMPTS, top_k=5)
    last = [row for row in table.to_pylist() if row["layer"] == LAYER_1]
    own_probs, own_ids = final.softmax(-1).topk(5)
    assert len(last) == 2  # one row per sample
    for sample, row in enumerate(last):
        assert row["top_token_ids"] == own_ids[sample].tolist()
        torch.testing.assert_close(torch.tensor(row["top_probs"]), own_probs[sample])


def test_each_layer_reads_its_own_hidden_state_through_norm_and_head(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("llava")
    readout = layer_logits(loaded, pair(images), PROMPTS)
    output, answers = own_outputs(loaded, pair(images), PROMPTS)
    language = loaded.model.model.language_model
    layer_0_out = output.hidden_states[1][torch.arange(2), answers]  # [0] is the embeddings
    with torch.inference_mode():
        expected = loaded.model.lm_head(language.norm(layer_0_out)).float()
    torch.testing.assert_close(readout.logits[0], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(readout.logits[0], readout.logits[1])


def test_label_rank_is_zero_when_the_label_is_the_models_top_token(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("llava")
    prompts = [PROMPTS[0]] * len(images)
    output, answers = own_outputs(loaded, images, prompts)
    top = output.logits[torch.arange(len(images)), answers].argmax(-1).tolist()
    usable = round_trip_labels(loaded, PROMPTS[0], top)  # samples whose top token is a whole word
    assert usable, "no image's top token decodes to a word that tokenizes back to it"
    sample, label = usable[0]
    table = logit_lens(loaded, [images[sample]], [prompts[sample]], labels=[label])
    last = table.to_pylist()[-1]
    assert last["layer"] == LAYER_1
    assert last["label_token_id"] == top[sample] == last["top_token_ids"][0]
    assert last["label_rank"] == 0
    assert last["label_prob"] == pytest.approx(last["top_probs"][0])


def test_label_rank_counts_the_tokens_more_probable_than_the_label(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("qwen2-vl")
    plain = logit_lens(loaded, [images[0]], [PROMPTS[1]], top_k=20).to_pylist()
    assert [row["layer"] for row in plain] == [LAYER_0, LAYER_1]
    for row in plain:
        usable = [
            (p, w) for p, w in round_trip_labels(loaded, PROMPTS[1], row["top_token_ids"]) if p > 0
        ]
        assert usable, f"no top-20 token of {row['layer']} round-trips"
        position, label = usable[0]
        labelled = logit_lens(
            loaded, [images[0]], [PROMPTS[1]], labels=[label], layers=[row["layer"]]
        ).to_pylist()
        assert len(labelled) == 1
        assert labelled[0]["label_rank"] == position
        assert labelled[0]["label_prob"] == pytest.approx(row["top_probs"][position])


def test_layers_glob_selects_decoder_layers_with_their_depth(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("qwen2-vl")
    stack = decoder_stack(loaded)
    assert stack.layers == [LAYER_0, LAYER_1]
    assert stack.norm == "model.language_model.norm"
    table = logit_lens(loaded, pair(images), PROMPTS, layers=[LAYER_1], image_ids=["a", "b"])
    rows = table.to_pylist()
    assert [(r["image_id"], r["layer"], r["layer_index"]) for r in rows] == [
        ("a", LAYER_1, 1),
        ("b", LAYER_1, 1),
    ]
    assert all(r["label"] is None and r["label_rank"] is None for r in rows)
    with pytest.raises(LogitLensError, match="selects none"):
        layer_logits(loaded, pair(images), PROMPTS, layers=["model.visual.blocks.*"])


@pytest.mark.parametrize(("architecture", "spaced"), [("llava", True), ("qwen2-vl", False)])
def test_label_token_is_the_word_as_written_after_the_prompt(
    architecture: str, spaced: bool, load_tiny: Callable[[str], LoadedModel]
) -> None:
    """LLaVA's prompt ends in "ASSISTANT:", so the answer follows a space; Qwen2-VL's ends in
    "assistant\\n", so it follows directly."""
    loaded = load_tiny(architecture)
    tokenizer = loaded.processor.tokenizer
    with_space = tokenizer(" cube", add_special_tokens=False)["input_ids"][0]
    bare = tokenizer("cube", add_special_tokens=False)["input_ids"][0]
    assert with_space != bare  # " c" and "c" in the tiny vocabularies: the rules differ
    assert answer_token_id(loaded, PROMPTS[0], "cube") == (with_space if spaced else bare)


@pytest.mark.parametrize("architecture", ["llava", "qwen2-vl"])
def test_a_row_of_two_images_is_read_as_asked_and_batches_exactly(
    architecture: str, load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    """The logit lens reads a row with all its images in one prompt: its readout beside a
    one-image row equals its readout alone, and it is the model's own final logits."""
    loaded = load_tiny(architecture)
    rows = [[images[1], images[3]], [images[0]]]
    together = layer_logits(loaded, rows, PROMPTS)
    alone = layer_logits(loaded, rows[:1], PROMPTS[:1])
    torch.testing.assert_close(together.logits[:, 0], alone.logits[:, 0], rtol=1e-4, atol=1e-4)
    output, answers = own_outputs(loaded, rows[:1], PROMPTS[:1])
    final = output.logits[0, answers[0]].float()
    torch.testing.assert_close(alone.logits[-1, 0], final, rtol=1e-4, atol=1e-4)
