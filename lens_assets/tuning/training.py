"""Training: a teacher-forced next-token loss on the answer's tokens only.

Each row's prompt is built exactly as extraction and answering build it (the adapter's
`prepare_on`, which applies the chat template and expands the image tokens); the answer follows
it as the model would write it (tokenized in context, as `analyses.answer_tokens` does) and then
the end-of-sequence token, so the tuned model also learns to stop. Only those tokens carry loss.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import BatchFeature

from lens_assets.analyses.behaviour import padding_side
from lens_assets.capture.loading import LoadedModel
from lens_assets.tuning.config import TuningConfig
from lens_assets.tuning.rows import TrainingRow

__all__ = [
    "IGNORE",
    "EncodedRow",
    "Progress",
    "answer_ids",
    "answer_loss",
    "collate",
    "encode_rows",
    "train_steps",
    "training_batch",
]

IGNORE = -100  # label of a position that carries no loss
# Per-token inputs other than ids and mask, and the value the answer's tokens take there:
# PaliGemma marks the suffix (the answer) with token type 1, attending causally; the others'
# token types mark images (0 is text).
ANSWER_TOKEN_TYPES = {"paligemma": {"token_type_ids": 1}}

Progress = Callable[[int, int, float], None]  # (step, steps, loss) after each step


def _tokenizer(processor: object) -> object:
    return getattr(processor, "tokenizer", processor)


def _pad_id(processor: object) -> int:
    """The tokenizer's padding id (0 where it has none): what fills a row past its end."""
    pad_id = getattr(_tokenizer(processor), "pad_token_id", None)
    return 0 if pad_id is None else int(pad_id)


def _eos_id(loaded: LoadedModel) -> int:
    eos = getattr(getattr(loaded.model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, list | tuple):
        eos = eos[0] if eos else None
    if eos is None:
        eos = getattr(_tokenizer(loaded.processor), "eos_token_id", None)
    if eos is None:
        raise ValueError(
            f"model {loaded.name!r} has no end-of-sequence token (generation_config and "
            "tokenizer name none); training teaches the answer to end with it: set eos_token_id"
        )
    return int(eos)


def answer_ids(loaded: LoadedModel, prompt: str, answer: str, n_images: int = 1) -> list[int]:
    """The tokens the model writes to give `answer` after `prompt`, then end-of-sequence.

    Tokenized in context (as `answer_token_id` does): after a space where the templated prompt
    ends in none, and as the tokens past the prompt's own where the two tokenize apart."""
    tokenizer = _tokenizer(loaded.processor)
    text = loaded.architecture.adapter.prompt_text(loaded.processor, prompt, n_images)
    if answer and not answer[0].isspace() and text and not text[-1].isspace():
        answer = " " + answer
    before = tokenizer(text, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    after = tokenizer(text + answer, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    if len(after) > len(before) and after[: len(before)] == before:
        ids = after[len(before) :]
    else:
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]  # type: ignore[operator]
    if not ids:
        raise ValueError(f"the answer {answer!r} tokenizes to nothing; rows need an answer")
    return [int(token) for token in ids] + [_eos_id(loaded)]


def training_batch(
    loaded: LoadedModel, rows: Sequence[TrainingRow]
) -> tuple[BatchFeature, torch.Tensor]:
    """The model's inputs for prompt + answer per row (right-padded) and the labels: the
    answer's token ids where they are, IGNORE elsewhere."""
    adapter, processor = loaded.architecture.adapter, loaded.processor
    with padding_side(processor, "right"):
        inputs = adapter.prepare_on(
            processor,
            [list(row.images) for row in rows],
            [row.prompt for row in rows],
            loaded.device,
            loaded.dtype,
        )
    inputs.pop("labels", None)  # PaliGemma's processor adds its own; the loss is computed here
    answers = [answer_ids(loaded, row.prompt, row.answer, len(row.images)) for row in rows]
    ids = inputs["input_ids"]
    if "attention_mask" not in inputs:  # every token real: the mask is made here
        inputs["attention_mask"] = torch.ones_like(ids)
    mask = inputs["attention_mask"]
    batch, width = ids.shape
    real = [mask[i].nonzero(as_tuple=True)[0] for i in range(batch)]
    lengths = [
        len(positions) + len(answer) for positions, answer in zip(real, answers, strict=True)
    ]
    total = max(lengths)
    pad_id = _pad_id(processor)
    fills = ANSWER_TOKEN_TYPES.get(loaded.architecture.name, {})
    labels = torch.full((batch, total), IGNORE, dtype=torch.long, device=ids.device)
    for key, value in list(inputs.items()):
        if not (isinstance(value, torch.Tensor) and value.shape[:2] == (batch, width)):
            continue  # pixels, image sizes, grids: not one entry per token
        pad = pad_id if key == "input_ids" else 0
        out = torch.full(
            (batch, total, *value.shape[2:]), pad, dtype=value.dtype, device=value.device
        )
        for i, (positions, answer) in enumerate(zip(real, answers, strict=True)):
            n = len(positions)
            out[i, :n] = value[i, positions]
            if key == "input_ids":
                tokens = torch.tensor(answer, dtype=value.dtype, device=value.device)
                out[i, n : n + len(answer)] = tokens
                labels[i, n : n + len(answer)] = tokens
            elif key == "attention_mask":
                out[i, n : n + len(answer)] = 1
            else:
                out[i, n : n + len(answer)] = fills.get(key, 0)
        inputs[key] = out
    return inputs, labels


@dataclass(frozen=True)
class EncodedRow:
    """One row's training inputs, prompt and answer, unpadded (batch of one): the processor
    and tokenizer run once per row, not once per step."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor  # (1, length)
    per_token: frozenset[str]  # the keys with one entry per token

    @property
    def length(self) -> int:
        return int(self.labels.shape[1])


def encode_rows(loaded: LoadedModel, rows: Sequence[TrainingRow]) -> list[EncodedRow]:
    """Each row through `training_batch` alone; `collate` joins any of them into a batch."""
    encoded = []
    for row in rows:
        inputs, labels = training_batch(loaded, [row])
        per_token = frozenset(
            key
            for key, value in inputs.items()
            if isinstance(value, torch.Tensor) and value.shape[:2] == labels.shape
        )
        encoded.append(EncodedRow(dict(inputs), labels, per_token))
    return encoded


def collate(
    loaded: LoadedModel, encoded: Sequence[EncodedRow]
) -> tuple[BatchFeature, torch.Tensor] | None:
    """The batch `training_batch` builds for these rows, from their encodings: per-token
    inputs right-padded as it pads them, the rest (pixels, grids, sizes) joined along the
    first axis. None where the rows' other inputs do not join that way (images of different
    counts or sizes, whose batching the processor pads): build that batch from the rows."""
    first = encoded[0]
    keys = first.inputs.keys()
    if any(row.inputs.keys() != keys or row.per_token != first.per_token for row in encoded):
        return None
    total = max(row.length for row in encoded)
    pad_id = _pad_id(loaded.processor)
    batch: dict[str, torch.Tensor] = {}
    for key in keys:
        values = [row.inputs[key] for row in encoded]
        if not all(isinstance(value, torch.Tensor) for value in values):
            return None
        if key in first.per_token:
            pad = pad_id if key == "input_ids" else 0
            batch[key] = torch.stack([_right_pad(value[0], total, pad) for value in values])
        elif values[0].dim() == 0 or any(
            value.shape[1:] != values[0].shape[1:] for value in values
        ):
            return None
        else:
            batch[key] = torch.cat(values)
    labels = torch.stack([_right_pad(row.labels[0], total, IGNORE) for row in encoded])
    return BatchFeature(batch), labels


def _right_pad(value: torch.Tensor, total: int, fill: int) -> torch.Tensor:
    out = torch.full((total, *value.shape[1:]), fill, dtype=value.dtype, device=value.device)
    out[: value.shape[0]] = value
    return out


def answer_loss(model: nn.Module, inputs: BatchFeature, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next-token predictions at the answer's positions."""
    logits = model(**inputs).logits
    predicted = logits[:, :-1].float()
    wanted = labels[:, 1:].to(predicted.device)
    return nn.functional.cross_entropy(
        predicted.reshape(-1, predicted.shape[-1]), wanted.reshape(-1), ignore_index=IGNORE
    )


def _schedule(config: TuningConfig) -> Callable[[int], float]:
    """The learning-rate factor per step: linear warm-up, then constant or cosine to zero."""

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        done = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * done))

    return factor


@dataclass
class Order:
    """Rows in a seeded order, reshuffled each pass: the same seed gives the same batches."""

    count: int
    seed: int

    def batches(self, size: int, steps: int) -> list[list[int]]:
        rng = random.Random(self.seed)
        pool: list[int] = []
        out = []
        for _ in range(steps):
            batch: list[int] = []
            while len(batch) < size:
                if not pool:
                    pool = list(range(self.count))
                    rng.shuffle(pool)
                batch.append(pool.pop())
            out.append(batch)
        return out


def train_steps(
    loaded: LoadedModel,
    model: nn.Module,
    trainable: Sequence[str],
    config: TuningConfig,
    rows: Sequence[TrainingRow],
    progress: Progress | None = None,
) -> list[float]:
    """Run `config.steps` optimiser steps of AdamW on the trainable parameters, in the
    model's own dtype and device; the loss per step."""
    if not rows:
        raise ValueError("no training rows; give rows with images, a prompt and an answer")
    named = dict(model.named_parameters())
    parameters = [named[name] for name in trainable]
    optimiser = torch.optim.AdamW(
        parameters, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, _schedule(config))
    batches = Order(len(rows), config.seed).batches(config.batch_size, config.steps)
    encoded = encode_rows(loaded, rows)
    losses: list[float] = []
    model.train()
    try:
        for step, batch in enumerate(batches, start=1):
            joined = collate(loaded, [encoded[i] for i in batch])
            inputs, labels = joined or training_batch(loaded, [rows[i] for i in batch])
            loss = answer_loss(model, inputs, labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
            optimiser.step()
            scheduler.step()
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"the loss is {value} at step {step}; lower learning_rate (now "
                    f"{config.learning_rate}) or train in float32"
                )
            losses.append(value)
            if progress is not None:
                progress(step, config.steps, value)
    finally:
        model.eval()
    return losses
