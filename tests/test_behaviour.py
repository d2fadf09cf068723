"""Behaviour: batched greedy answers equal one-at-a-time answers; answers map onto vocabularies.

Tiny random models answer with arbitrary tokens, which is fine: equality across batch sizes is
the point, since left padding that leaked into positions or attention would change them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from PIL import Image

from lens_assets.analyses.behaviour import (
    BehaviourNotSupported,
    generate_answers,
    generate_token_ids,
    normalise_answer,
    padding_side,
    score_answers,
    supports_generation,
)
from lens_assets.capture.loading import LoadedModel
from tests.conftest import PROMPTS

GENERATIVE = ("llava", "qwen2-vl")
MAX_NEW_TOKENS = 6


@pytest.mark.parametrize("architecture", GENERATIVE)
def test_batched_answers_equal_one_at_a_time(
    architecture: str,
    load_tiny: Callable[[str], LoadedModel],
    images: list[Image.Image],
) -> None:
    loaded = load_tiny(architecture)
    tokenizer = loaded.processor.tokenizer
    # The batch really is padded: the prompts differ in length (and Qwen2-VL's image token
    # counts differ with the image sizes), so a padding bug could not hide.
    with padding_side(loaded.processor, "left"):
        mask = loaded.architecture.adapter.prepare(loaded.processor, images, PROMPTS)[
            "attention_mask"
        ]
    assert (mask == 0).any()

    single = generate_token_ids(loaded, images, PROMPTS, MAX_NEW_TOKENS, batch_size=1)
    for batch_size in (5, 3):  # one batch, then a full batch and a ragged one
        batched = generate_token_ids(loaded, images, PROMPTS, MAX_NEW_TOKENS, batch_size)
        assert batched == single, f"batch size {batch_size} changed the greedy tokens"

    answers = generate_answers(loaded, images, PROMPTS, MAX_NEW_TOKENS, batch_size=5)
    assert answers == generate_answers(loaded, images, PROMPTS, MAX_NEW_TOKENS, batch_size=1)
    assert len(answers) == len(images)
    assert all(isinstance(answer, str) for answer in answers)
    assert all(len(ids) <= MAX_NEW_TOKENS for ids in single)
    for answer, ids in zip(answers, single, strict=True):
        assert answer == tokenizer.decode(ids, skip_special_tokens=True).strip()
    assert tokenizer.padding_side == "right"


@pytest.mark.parametrize("architecture", GENERATIVE)
def test_max_new_tokens_is_respected(
    architecture: str,
    load_tiny: Callable[[str], LoadedModel],
    images: list[Image.Image],
) -> None:
    loaded = load_tiny(architecture)
    ids = generate_token_ids(loaded, images[:2], PROMPTS[:2], max_new_tokens=2)
    assert all(len(row) <= 2 for row in ids)
    assert supports_generation(loaded)


def test_padding_side_is_restored_after_generation_and_on_error(
    load_tiny: Callable[[str], LoadedModel],
    images: list[Image.Image],
) -> None:
    loaded = load_tiny("llava")
    tokenizer = loaded.processor.tokenizer
    assert tokenizer.padding_side == "right"
    generate_answers(loaded, images[:2], PROMPTS[:2], max_new_tokens=1)
    assert tokenizer.padding_side == "right"

    with pytest.raises(RuntimeError, match="boom"), padding_side(loaded.processor, "left"):
        assert tokenizer.padding_side == "left"
        raise RuntimeError("boom")
    assert tokenizer.padding_side == "right"


def test_mismatched_inputs_are_rejected(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("llava")
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        generate_answers(loaded, images[:2], PROMPTS[:1])
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_answers(loaded, images[:1], PROMPTS[:1], max_new_tokens=0)
    assert generate_answers(loaded, [], []) == []


def test_dual_encoder_cannot_answer(
    load_tiny: Callable[[str], LoadedModel], images: list[Image.Image]
) -> None:
    loaded = load_tiny("clip")
    assert not supports_generation(loaded)
    with pytest.raises(BehaviourNotSupported) as error:
        generate_answers(loaded, images[:1], PROMPTS[:1])
    message = str(error.value)
    assert "'clip'" in message and "CLIPModel" in message
    assert "cannot generate" in message and "skip" in message
    assert loaded.processor.tokenizer.padding_side == "right"


COLOURS = ["red", "green", "blue", "light blue", "yellow"]
DIGITS = [str(n) for n in range(11)]
WORDS = ["zero", "one", "two", "three"]
LETTERS = ["A", "B", "C", "D"]


@pytest.mark.parametrize(
    ("text", "vocabulary", "expected"),
    [
        # colours: case, punctuation, articles, longest entry wins
        ("The color is Red.", COLOURS, "red"),
        ("red", COLOURS, "red"),
        ("It's GREEN!", COLOURS, "green"),
        ("a yellow cube", COLOURS, "yellow"),
        ("light-blue", COLOURS, "light blue"),
        ("Light blue.", COLOURS, "light blue"),
        ("Red, red.", COLOURS, "red"),
        # digits and number words, in both directions
        ("2", DIGITS, "2"),
        ("two", DIGITS, "2"),
        ("There are Two objects.", DIGITS, "2"),
        ("10", DIGITS, "10"),
        ("ten", DIGITS, "10"),
        ("3", WORDS, "three"),
        ("Zero.", WORDS, "zero"),
        # letters: returned as the vocabulary spells them
        ("(B)", LETTERS, "B"),
        ("B.", LETTERS, "B"),
        ("b", LETTERS, "B"),
        ("A", LETTERS, "A"),
        ("(A)", LETTERS, "A"),
        ("The answer is A.", LETTERS, "A"),
        ("A) the left one", LETTERS, "A"),
        ("The answer is c", ["a", "b", "c", "d"], "c"),
        # no match
        ("purple", COLOURS, None),
        ("", COLOURS, None),
        ("reddish", COLOURS, None),
        ("eleven", DIGITS, None),
        ("E", LETTERS, None),
        ("A red cube", LETTERS, None),  # "A" is an article here, not option A
        # ambiguous: several different entries
        ("red or green", COLOURS, None),
        ("2 or 3", DIGITS, None),
        ("(A) or (B)", LETTERS, None),
        ("two", ["2", "two"], None),
    ],
)
def test_normalise_answer(text: str, vocabulary: list[str], expected: str | None) -> None:
    assert normalise_answer(text, vocabulary) == expected


def test_score_answers_adds_answer_and_correct_without_mutating() -> None:
    rows = [
        {"id": 1, "answer_text": "The color is Red.", "expected": "red", "vocabulary": COLOURS},
        {"id": 2, "answer_text": "blue", "expected": "red", "vocabulary": COLOURS},
        {"id": 3, "answer_text": "two", "expected": 2, "vocabulary": range(11)},
        {"id": 4, "answer_text": "(b)", "expected": "B", "vocabulary": LETTERS},
        {"id": 5, "answer_text": "red or blue", "expected": "red", "vocabulary": COLOURS},
        {"id": 6, "answer_text": "", "expected": "red", "vocabulary": COLOURS},
    ]
    scored = score_answers(rows)
    assert [row["answer"] for row in scored] == ["red", "blue", "2", "B", None, None]
    assert [row["correct"] for row in scored] == [True, False, True, True, False, False]
    assert [row["id"] for row in scored] == [1, 2, 3, 4, 5, 6]
    assert "answer" not in rows[0]
