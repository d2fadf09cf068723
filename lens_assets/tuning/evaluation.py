"""Held-out accuracy through the real answering path: greedy answers (`generate_answers`)
scored against each row's answer (`score_answers`), per question kind, beside chance."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from lens_assets.analyses.behaviour import generate_answers, score_answers
from lens_assets.capture.loading import LoadedModel
from lens_assets.tuning.rows import TrainingRow
from lens_assets.tuning.training import answer_ids

__all__ = ["Evaluation", "KindScore", "evaluate"]


@dataclass(frozen=True)
class KindScore:
    accuracy: float
    n: int
    chance: float  # 1 / the number of answers the kind offers


@dataclass
class Evaluation:
    accuracy: float
    n: int
    by_kind: dict[str, KindScore]
    rows: list[dict[str, Any]] = field(default_factory=list)


def _vocabularies(rows: Sequence[TrainingRow]) -> dict[str | None, list[str]]:
    """Each kind's answers: the rows' own choices, else every answer the kind's rows have."""
    seen: dict[str | None, set[str]] = defaultdict(set)
    for row in rows:
        seen[row.kind].update(row.choices or (row.answer,))
    return {kind: sorted(values) for kind, values in seen.items()}


def evaluate(loaded: LoadedModel, rows: Sequence[TrainingRow], batch_size: int = 16) -> Evaluation:
    """Ask every row, score the greedy answers; enough new tokens for the longest answer."""
    if not rows:
        raise ValueError("no held-out rows to evaluate on")
    vocabularies = _vocabularies(rows)
    longest = max(
        len(answer_ids(loaded, row.prompt, entry, len(row.images)))
        for row in {row.kind: row for row in rows}.values()
        for entry in vocabularies[row.kind]
    )
    texts = generate_answers(
        loaded,
        [list(row.images) for row in rows],  # type: ignore[misc]
        [row.prompt for row in rows],
        max_new_tokens=longest,
        batch_size=batch_size,
    )
    scored = score_answers(
        {
            "kind": row.kind,
            "prompt": row.prompt,
            "answer_text": text,
            "expected": row.answer,
            "vocabulary": row.choices or vocabularies[row.kind],
        }
        for row, text in zip(rows, texts, strict=True)
    )
    by_kind: dict[str, KindScore] = {}
    for kind in sorted({str(row["kind"]) for row in scored}):
        mine = [row for row in scored if str(row["kind"]) == kind]
        chance = sum(1 / len(row["vocabulary"]) for row in mine) / len(mine)
        by_kind[kind] = KindScore(
            sum(row["correct"] for row in mine) / len(mine), len(mine), chance
        )
    accuracy = sum(row["correct"] for row in scored) / len(scored)
    return Evaluation(accuracy, len(scored), by_kind, scored)
