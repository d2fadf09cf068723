"""A tuned model beside its base on the same held-out rows (issue 20, point 4: the study's
comparison of each variant with its base).

Each model answers every held-out row through the path the held-out accuracy takes
(`evaluation.evaluate`: greedy answers scored against the row's answer), and for each row the
share of the answer position's attention that lands on the row's image tokens is read (mean
over the language model's decoder layers and heads). One record per (row, model) is a row of
table `tuning_answers`; view `tuning_effects` sums them up beside the layer-wise readouts.

Why the `tuned_model` step asks both models, rather than the `answers` and `attention_maps`
tables: the held-out rows are the tuning config's own (`held_out`, less every row that shows a
training image), possibly an inline dataset no other asset covers, and the base must be asked
exactly those rows. The tuned model's step is the one place that knows them and loads both
models. The readouts need nothing new: `vision_vs_vlm` solves every visual-task row of every
dataset config from every layer, for the tuned model and for its base as model partitions, so
the view reads the base's readouts from the base's own partition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from lens_assets.analyses.attention import answer_attention
from lens_assets.analyses.patches import stack_layers
from lens_assets.capture.loading import LoadedModel
from lens_assets.capture.token_roles import TokenRole
from lens_assets.tuning.evaluation import Evaluation, evaluate
from lens_assets.tuning.rows import TrainingRow

__all__ = ["Role", "answer_records", "image_shares", "language_layers"]

Role = Literal["tuned", "base"]


def language_layers(loaded: LoadedModel) -> list[str]:
    """The language model's decoder layers, in depth order (the `llm` stage of the stacks)."""
    found = stack_layers(loaded.model, loaded.architecture.adapter.is_vision)
    return [layer.name for layer in found if layer.stage == "llm"]


def image_shares(
    loaded: LoadedModel, rows: Sequence[TrainingRow], batch_size: int = 8
) -> list[float | None]:
    """Per row: the answer position's attention mass on the row's image tokens, averaged over
    every decoder layer and head (None for a row without images). The answer position is the
    last prompt token, whose output predicts the answer's first token."""
    layers = language_layers(loaded)
    if not layers:
        raise ValueError(
            f"model {loaded.name!r} has no language-model layer stack to read attention from"
        )
    shares: list[float | None] = []
    step = max(batch_size, 1)
    for start in range(0, len(rows), step):
        batch = rows[start : start + step]
        capture = answer_attention(
            loaded, [list(row.images) for row in batch], [row.prompt for row in batch], layers
        )
        on_image = capture.roles == TokenRole.IMAGE  # (batch, keys)
        for sample, row in enumerate(batch):
            if not row.images or not bool(on_image[sample].any()):
                shares.append(None)
                continue
            per_layer = [
                capture.weights[layer][sample][:, on_image[sample]].sum(dim=-1)  # (heads,)
                for layer in capture.layers
            ]
            shares.append(float(torch.stack(per_layer).double().mean()))
    return shares


def answer_records(
    loaded: LoadedModel,
    rows: Sequence[TrainingRow],
    model: str,
    role: Role,
    batch_size: int = 8,
) -> tuple[Evaluation, list[dict[str, Any]]]:
    """`loaded` asked every held-out row of tuned model `model` (as itself, role "tuned", or
    as its base, role "base"): the evaluation, and one `tuning_answers` record per row."""
    evaluation = evaluate(loaded, rows, batch_size)
    shares = image_shares(loaded, rows, batch_size)
    records = [
        {
            "model": model,
            "role": role,
            "answered_by": loaded.name,
            "dataset": row.dataset,
            "row_key": row.row_key,
            "image_ids": list(row.image_ids),
            "kind": row.kind,
            "prompt": row.prompt,
            "answer_text": scored["answer_text"],
            "answer": scored["answer"],
            "expected": row.answer,
            "correct": bool(scored["correct"]),
            "options": len(scored["vocabulary"]),
            "image_share": share,
        }
        for row, scored, share in zip(rows, evaluation.rows, shares, strict=True)
    ]
    return evaluation, records
