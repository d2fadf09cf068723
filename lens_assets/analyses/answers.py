"""Behaviour: ask a model every question of its datasets and score the answers against the
ground truth, normalised to each concept's vocabulary."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from lens_assets.analyses.behaviour import generate_answers, score_answers
from lens_assets.capture.loading import LoadedModel
from lens_assets.data.images import load_image
from lens_assets.resources import schemas
from lens_assets.resources.warehouse import Warehouse

ANSWER_ROWS = schemas.ANSWERS


def questions_with_answers(warehouse: Warehouse, datasets: Sequence[str]) -> list[dict[str, Any]]:
    """Every question with a known answer, with its image's path and concept."""
    marks = ", ".join("?" for _ in datasets)
    return warehouse.fetch_arrow(
        f"""
        SELECT p.dataset, p.image_id, p.prompt_id, p.prompt, p.answer AS expected, p.kind,
               coalesce(p.concept, p.kind) AS concept, any_value(i.path) AS path
        FROM prompts AS p JOIN images AS i USING (image_id, dataset)
        WHERE p.dataset IN ({marks}) AND p.answer IS NOT NULL
        GROUP BY ALL ORDER BY p.dataset, p.prompt_id
        """,
        list(datasets),
    ).to_pylist()


def _vocabularies(questions: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """Per (dataset, concept): every answer the dataset expects for it."""
    vocabulary: dict[tuple[str, str], set[str]] = defaultdict(set)
    for q in questions:
        vocabulary[(q["dataset"], q["concept"])].add(q["expected"])
    return {key: sorted(values) for key, values in vocabulary.items()}


def answer_questions(
    loaded: LoadedModel,
    warehouse: Warehouse,
    datasets: Sequence[str],
    max_new_tokens: int = 5,
    batch_size: int = 8,
) -> pa.Table:
    """Greedy answers to every question with a known answer, scored; one row per question."""
    questions = questions_with_answers(warehouse, datasets)
    if not questions:
        return ANSWER_ROWS.empty_table()
    pictures = {path: load_image(path).image for path in {q["path"] for q in questions}}
    texts = generate_answers(
        loaded,
        [pictures[q["path"]] for q in questions],
        [q["prompt"] for q in questions],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    vocabularies = _vocabularies(questions)
    scored = score_answers(
        [
            {**q, "answer_text": text, "vocabulary": vocabularies[(q["dataset"], q["concept"])]}
            for q, text in zip(questions, texts, strict=True)
        ]
    )
    return pa.Table.from_pylist(
        [{**row, "model": loaded.name} for row in scored], schema=ANSWER_ROWS
    )
