"""Behaviour: what a VLM answers about an image, mapped onto a concept's label vocabulary.

Activations say what a model represents; behaviour says what it does with it. This module asks
the model a question per (image, prompt), decodes its greedy answer and scores it against the
expected label, so probes can be compared with the model's own accuracy.

Plain Python (no Dagster) so notebooks, the CLI and the orchestration layer share it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image

from lens_assets.capture.loading import LoadedModel

__all__ = [
    "BehaviourNotSupported",
    "generate_answers",
    "generate_token_ids",
    "normalise_answer",
    "padding_side",
    "require_generation",
    "score_answers",
    "supports_generation",
]


class BehaviourNotSupported(RuntimeError):
    """The model cannot answer a question about an image (e.g. a dual encoder such as CLIP).

    Callers skip such models for behaviour rather than fail the run.
    """


# -- can this model answer? ----------------------------------------------------------------


def _image_text_to_text_classes() -> frozenset[str]:
    """Class names transformers registers as image-text-to-text (generating) models."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    names: set[str] = set()
    for value in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return frozenset(names)


def _generation_gap(loaded: LoadedModel) -> str | None:
    """Why this model cannot answer about an image, or None when it can.

    Decided from what the model is, not from its architecture's name: it must be able to
    generate, and it must read images (a registered image-text-to-text class, or, for remote
    code, a model with a vision tower).
    """
    model = loaded.model
    can_generate = getattr(model, "can_generate", None)
    if not callable(getattr(model, "generate", None)) or not (
        callable(can_generate) and can_generate()
    ):
        return "it cannot generate text (a dual encoder scores image-text pairs, no answers)"
    if type(model).__name__ in _image_text_to_text_classes():
        return None
    adapter = loaded.architecture.adapter
    if any(adapter.is_vision(name) for name, _ in model.named_modules() if name):
        return None
    return "it generates text but has no vision tower to read the image with"


def supports_generation(loaded: LoadedModel) -> bool:
    """Whether `generate_answers` can run on this model."""
    return _generation_gap(loaded) is None


def require_generation(loaded: LoadedModel) -> None:
    """Raise `BehaviourNotSupported` naming the architecture when the model cannot answer."""
    gap = _generation_gap(loaded)
    if gap is not None:
        raise BehaviourNotSupported(
            f"model {loaded.name!r} (architecture {loaded.architecture.name!r}, "
            f"{type(loaded.model).__name__}) cannot be asked questions: {gap}; behaviour "
            "evaluation needs an image-text-to-text model, so skip this model for behaviour"
        )


# -- generation ----------------------------------------------------------------------------


@contextmanager
def padding_side(processor: Any, side: str) -> Iterator[None]:
    """Pad on `side` inside the block and restore the previous side afterwards, even on error.

    Generation needs left padding (each row's new tokens must follow its prompt directly, with
    no pads in between); extraction needs right padding (the adapter sets it at load time so
    every real token keeps its batch-size-1 position). The tokenizer is shared state, so the
    switch is scoped. Do not run extraction and generation on one model from two threads.
    """
    tokenizer = getattr(processor, "tokenizer", processor)
    previous = getattr(tokenizer, "padding_side", None)
    tokenizer.padding_side = side
    try:
        yield
    finally:
        tokenizer.padding_side = previous


def _batches(count: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, count, batch_size):
        yield slice(start, min(start + batch_size, count))


def _eos_ids(model: Any) -> set[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(token) for token in eos}


def _trim(tokens: list[int], stop: set[int]) -> list[int]:
    """The answer's tokens: up to (not including) the first end-of-sequence token; what follows
    it in a batch is padding."""
    for index, token in enumerate(tokens):
        if token in stop:
            return tokens[:index]
    return tokens


def _check_inputs(images: Sequence[Any], prompts: Sequence[str], **limits: int) -> None:
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts; give one prompt each")
    for name, value in limits.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def generate_token_ids(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    max_new_tokens: int = 5,
    batch_size: int = 8,
) -> list[list[int]]:
    """The greedy answer's new token ids per (image, prompt), end-of-sequence and padding cut.

    Batched with left padding: generate's position ids come from the attention mask (the
    generic path counts real tokens; Qwen2-VL's 3D rope index skips masked tokens and keeps a
    per-row offset), so a row's tokens equal those of batch size 1 up to float rounding.
    """
    require_generation(loaded)
    _check_inputs(images, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size)
    adapter, processor, model = loaded.architecture.adapter, loaded.processor, loaded.model
    tokenizer = getattr(processor, "tokenizer", processor)
    pad_id = getattr(tokenizer, "pad_token_id", None)
    stop = _eos_ids(model)
    answers: list[list[int]] = []
    with padding_side(processor, "left"):
        for part in _batches(len(images), batch_size):
            inputs = adapter.prepare_on(
                processor, images[part], prompts[part], loaded.device, loaded.dtype
            )
            with torch.inference_mode():
                output = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id if pad_id is not None else next(iter(stop), None),
                )
            sequences = output if isinstance(output, torch.Tensor) else output.sequences
            new = sequences[:, inputs["input_ids"].shape[1] :].tolist()
            answers.extend(_trim(row, stop) for row in new)
    return answers


def generate_answers(
    loaded: LoadedModel,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    max_new_tokens: int = 5,
    batch_size: int = 8,
) -> list[str]:
    """The model's greedy answer per (image, prompt): new tokens only, special tokens skipped,
    whitespace stripped. Raises `BehaviourNotSupported` for models that cannot answer."""
    tokenizer = getattr(loaded.processor, "tokenizer", loaded.processor)
    ids = generate_token_ids(loaded, images, prompts, max_new_tokens, batch_size)
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in ids]


# -- answers onto a vocabulary -------------------------------------------------------------

NUMBER_WORDS: dict[str, str] = {
    word: str(value)
    for value, word in enumerate(
        ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    )
}
ARTICLES = ("a", "an", "the")
# An article only when a word follows it: "A red cube" drops "A", but in "(A)", "A." or
# "The answer is A" the letter is an answer option.
_ARTICLE = re.compile(rf"\b(?:{'|'.join(ARTICLES)})\b(?=\s+\w)")
_NOT_WORD = re.compile(r"[\W_]+")


def _words(text: str) -> tuple[str, ...]:
    """Lower-cased words without punctuation, number words as digits ("Two." -> ("2",))."""
    words = _NOT_WORD.sub(" ", text.lower()).split()
    return tuple(NUMBER_WORDS.get(word, word) for word in words)


def _spans(words: tuple[str, ...], entry: tuple[str, ...]) -> list[tuple[int, int]]:
    width = len(entry)
    return [
        (start, start + width)
        for start in range(len(words) - width + 1)
        if words[start : start + width] == entry
    ]


def normalise_answer(text: str | None, vocabulary: Iterable[str]) -> str | None:
    """The one vocabulary entry a free-text answer names, spelled as the vocabulary spells it.

    Matching is on whole words, case-insensitive, without punctuation or articles, with number
    words 0-10 equal to digits ("two" matches "2" and "2" matches "two"). A multi-word entry
    ("light blue") wins over an entry inside it ("blue"). None when no entry or several
    different entries match: an unclear answer is not counted as any label.
    """
    if not text:
        return None
    words = _words(_ARTICLE.sub(" ", text.lower()))
    matches: list[tuple[int, int, str]] = []
    for entry in vocabulary:
        key = _words(str(entry))
        if key:
            matches.extend((start, end, str(entry)) for start, end in _spans(words, key))
    kept = {
        entry
        for start, end, entry in matches
        if not any(s <= start and end <= e and (e - s) > (end - start) for s, e, _ in matches)
    }
    return kept.pop() if len(kept) == 1 else None


def same_answer(answer: str | None, expected: Any) -> bool:
    return answer is not None and _words(answer) == _words(str(expected))


def score_answers(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each row with `answer` (the normalised answer, or None) and `correct` added.

    Rows need `answer_text`, `expected` and `vocabulary`; the input rows are not modified.
    `correct` compares labels the way `normalise_answer` matches them, so an expected `2`
    (an int from a table) equals the answer "2".
    """
    scored: list[dict[str, Any]] = []
    for row in rows:
        vocabulary = [str(entry) for entry in row["vocabulary"]]
        answer = normalise_answer(row["answer_text"], vocabulary)
        scored.append({**row, "answer": answer, "correct": same_answer(answer, row["expected"])})
    return scored
