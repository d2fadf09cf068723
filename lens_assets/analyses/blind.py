"""The blind test of "Hidden in plain sight": ask the same questions about real images and
about blank ones. If the blank-image answers sit as close to the labels as the real-image
answers do, the model is not looking at the image."""

from __future__ import annotations

from typing import Any

from lens_assets.analyses.behaviour import same_answer
from lens_assets.analyses.similarity import distribution, total_variation
from lens_assets.resources.warehouse import Warehouse


def _answers(warehouse: Warehouse, model: str, dataset: str) -> dict[str, list[dict[str, Any]]]:
    rows = warehouse.fetch_arrow(
        "SELECT concept, prompt, answer, expected, correct FROM answers "
        "WHERE model = ? AND dataset = ?",
        [model, dataset],
    ).to_pylist()
    by_concept: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_concept.setdefault(row["concept"], []).append(row)
    return by_concept


def blind_test_rows(
    warehouse: Warehouse, model: str, blanks: dict[str, str]
) -> list[dict[str, Any]]:
    """One row per (real dataset, blank dataset, concept) the model answered on both;
    `blanks` maps each blank dataset to the dataset whose questions it borrows.

    A blank input asked a question is one row however many real rows asked it, so each real
    row is set beside the blank answer to its own question: the blank answers' distribution
    and accuracy are weighted as the real questions are."""
    rows = []
    for blank, source in sorted(blanks.items()):
        real, blind = _answers(warehouse, model, source), _answers(warehouse, model, blank)
        for concept in sorted(set(real) & set(blind)):
            on_blank_by_prompt = {r["prompt"]: r["answer"] for r in blind[concept]}
            paired = [r for r in real[concept] if r["prompt"] in on_blank_by_prompt]
            if not paired:
                continue
            blank_answers = [on_blank_by_prompt[r["prompt"]] for r in paired]
            labels = distribution(r["expected"] for r in paired)
            on_real = distribution(r["answer"] for r in paired)
            on_blank = distribution(blank_answers)
            rows.append(
                {
                    "model": model,
                    "dataset": source,
                    "blank_dataset": blank,
                    "concept": concept,
                    "n_real": len(paired),
                    "n_blank": len(paired),  # real questions with a blank answer beside them
                    "accuracy_real": sum(bool(r["correct"]) for r in paired) / len(paired),
                    "accuracy_blank": sum(
                        same_answer(answer, r["expected"])
                        for answer, r in zip(blank_answers, paired, strict=True)
                    )
                    / len(paired),
                    "tv_real_labels": total_variation(on_real, labels),
                    "tv_blank_labels": total_variation(on_blank, labels),
                    "tv_real_blank": total_variation(on_real, on_blank),
                }
            )
    return rows
