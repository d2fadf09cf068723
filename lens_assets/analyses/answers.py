"""Behaviour: ask a model every question of its datasets (each row's own question, with all of
the row's images in one prompt) and score the answers against the row's expected answer,
normalised to its choices (or to the concept's vocabulary where a row offers none)."""

from __future__ import annotations

import logging
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
log = logging.getLogger(__name__)


def questions_of(warehouse: Warehouse, datasets: Sequence[str]) -> list[dict[str, Any]]:
    """Every row with a question of its own, with its images' files in order. Rows of a blank
    dataset have no expected answer of their own; the blind test scores them per real row."""
    marks = ", ".join("?" for _ in datasets)
    return warehouse.fetch_arrow(
        f"""
        SELECT r.dataset, r.row_key, r.position AS prompt_id, r.prompt, r.answer AS expected,
               r.kind, coalesce(r.concept, r.kind) AS concept, r.choices, r.image_ids,
               list_transform(r.image_ids, id -> p.paths[id]) AS paths
        FROM dataset_rows AS r
        JOIN (SELECT dataset, map(list(image_id), list(path)) AS paths
              FROM (SELECT dataset, image_id, min(path) AS path FROM images GROUP BY ALL)
              GROUP BY dataset) AS p USING (dataset)
        WHERE r.dataset IN ({marks}) AND r.prompt IS NOT NULL
        ORDER BY r.dataset, r.position
        """,
        list(datasets),
    ).to_pylist()


def _vocabularies(questions: list[dict[str, Any]]) -> dict[tuple[str, str], list[str]]:
    """Per (dataset, concept): every answer the dataset expects or offers for it."""
    vocabulary: dict[tuple[str, str], set[str]] = defaultdict(set)
    for q in questions:
        key = (q["dataset"], q["concept"])
        vocabulary[key].update(q["choices"] or [])
        if q["expected"] is not None:
            vocabulary[key].add(q["expected"])
    return {key: sorted(values) for key, values in vocabulary.items()}


def answerable(loaded: LoadedModel, questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The questions this model can be asked as they are: a family that takes one image per
    prompt cannot be asked about several, and one that needs an image cannot be asked none."""
    adapter = loaded.architecture.adapter
    most = adapter.max_images
    kept = [
        q
        for q in questions
        if (most is None or len(q["image_ids"]) <= most)
        and (q["image_ids"] or (adapter.text_only and adapter.generates_text_only))
    ]
    if len(kept) < len(questions):
        log.warning(
            "%s: %d of %d questions left unasked: this family takes %s image(s) per prompt%s",
            loaded.name, len(questions) - len(kept), len(questions),
            "any number of" if most is None else f"at most {most}",
            "" if adapter.text_only and adapter.generates_text_only else " and needs one",
        )  # fmt: skip
    return kept


def answer_questions(
    loaded: LoadedModel,
    warehouse: Warehouse,
    datasets: Sequence[str],
    max_new_tokens: int = 5,
    batch_size: int = 8,
) -> pa.Table:
    """Greedy answers to every question, scored where the row knows its answer; one row per
    dataset row asked."""
    every = questions_of(warehouse, datasets)  # the vocabularies cover the unasked rows too
    questions = answerable(loaded, every)
    if not questions:
        return ANSWER_ROWS.empty_table()
    paths = {path for q in questions for path in q["paths"]}
    pictures = {path: load_image(path).image for path in paths}
    texts = generate_answers(
        loaded,
        [[pictures[path] for path in q["paths"]] for q in questions],
        [q["prompt"] for q in questions],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
    )
    vocabularies = _vocabularies(every)
    by_concept: dict[str, set[str]] = defaultdict(set)
    for (_, concept), words in vocabularies.items():
        by_concept[concept].update(words)
    scored = score_answers(
        [
            {
                **q,
                "answer_text": text,
                # a blank dataset's rows borrow their concept's words from the real rows
                "vocabulary": q["choices"]
                or vocabularies.get((q["dataset"], q["concept"]))
                or sorted(by_concept[q["concept"]]),
            }
            for q, text in zip(questions, texts, strict=True)
        ]
    )
    return pa.Table.from_pylist(
        [
            {
                **{column: row.get(column) for column in ANSWER_ROWS.names},
                "model": loaded.name,
                "image_id": row["image_ids"][0] if row["image_ids"] else None,
                "correct": row["correct"] if row["expected"] is not None else None,
            }
            for row in scored
        ],
        schema=ANSWER_ROWS,
    )
