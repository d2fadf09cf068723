"""The blind test of "Hidden in plain sight": ask the same questions about real images and
about blank ones. If the blank-image answers sit as close to the labels as the real-image
answers do, the model is not looking at the image."""

from __future__ import annotations

from typing import Any

from lens_assets.analyses.similarity import distribution, total_variation
from lens_assets.resources.warehouse import Warehouse


def _answers(warehouse: Warehouse, model: str, dataset: str) -> dict[str, list[dict[str, Any]]]:
    rows = warehouse.fetch_arrow(
        "SELECT concept, answer, expected, correct FROM answers WHERE model = ? AND dataset = ?",
        [model, dataset],
    ).to_pylist()
    by_concept: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_concept.setdefault(row["concept"], []).append(row)
    return by_concept


def _accuracy(rows: list[dict[str, Any]]) -> float:
    return sum(bool(r["correct"]) for r in rows) / len(rows)


def blind_test_rows(
    warehouse: Warehouse, model: str, blanks: dict[str, str]
) -> list[dict[str, Any]]:
    """One row per (real dataset, blank dataset, concept) the model answered on both;
    `blanks` maps each blank dataset to the dataset whose questions it borrows."""
    rows = []
    for blank, source in sorted(blanks.items()):
        real, blind = _answers(warehouse, model, source), _answers(warehouse, model, blank)
        for concept in sorted(set(real) & set(blind)):
            labels = distribution(r["expected"] for r in real[concept])
            on_real = distribution(r["answer"] for r in real[concept])
            on_blank = distribution(r["answer"] for r in blind[concept])
            rows.append(
                {
                    "model": model,
                    "dataset": source,
                    "blank_dataset": blank,
                    "concept": concept,
                    "n_real": len(real[concept]),
                    "n_blank": len(blind[concept]),
                    "accuracy_real": _accuracy(real[concept]),
                    "accuracy_blank": _accuracy(blind[concept]),
                    "tv_real_labels": total_variation(on_real, labels),
                    "tv_blank_labels": total_variation(on_blank, labels),
                    "tv_real_blank": total_variation(on_real, on_blank),
                }
            )
    return rows
