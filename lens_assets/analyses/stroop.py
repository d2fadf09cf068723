"""The Stroop study of VLM-Lens, per layer: how many principal components each cue (word,
font colour, background colour) needs to separate, and which cue the representation follows
when the three disagree."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from lens_assets.analyses.reading import load_labels, load_vectors, pooled_layers
from lens_assets.analyses.similarity import components_to_separate, dominance, separation_curve
from lens_assets.resources.warehouse import Warehouse

CUES = ("word", "font", "background")


def _stroop_datasets(con: Any, model: str) -> list[str]:
    """Datasets of this model whose images carry all three cues."""
    rows = con.execute(
        "SELECT l.dataset FROM image_labels l JOIN (SELECT DISTINCT dataset FROM activations "
        "WHERE model = ?) a USING (dataset) WHERE l.concept IN ('word', 'font', 'background') "
        "GROUP BY l.dataset HAVING count(DISTINCT l.concept) = 3 ORDER BY 1",
        [model],
    ).fetchall()
    return [r[0] for r in rows]


def concept_similarity_rows(
    warehouse: Warehouse, model: str, max_components: int = 10, threshold: float = 0.9
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(separation curve rows, dominance rows) for every Stroop dataset, layer and pooling."""
    curves: list[dict[str, Any]] = []
    shares: list[dict[str, Any]] = []
    with warehouse.connect(read_only=True) as con:
        for dataset in _stroop_datasets(con, model):
            labels = load_labels(con, dataset)
            for layer, pooling in pooled_layers(con, model, dataset):
                ids, X = load_vectors(con, model, dataset, layer, pooling)
                if np.ptp(X, axis=0).max(initial=0.0) == 0.0:
                    continue  # the same vector for every image (a text tower): nothing to see
                keep = [i for i, image in enumerate(ids) if all(image in labels[c] for c in CUES)]
                cues = {c: [labels[c][ids[i]] for i in keep] for c in CUES}
                smallest = min(min(Counter(v).values()) for v in cues.values())
                if len(keep) < 4 or smallest < 2:
                    continue
                where = {"model": model, "dataset": dataset, "layer": layer, "pooling": pooling}
                curve = separation_curve(X[keep], cues, max_components, folds=min(5, smallest))
                curves += [{**where, **row} for row in curve]
                needed = components_to_separate(curve, threshold)
                disagree = [len({cues[c][i] for c in CUES}) == 3 for i in range(len(keep))]
                try:
                    followed = dominance(X[keep], cues, disagree)
                except ValueError:
                    followed = {}
                shares += [
                    {**where, "cue": cue, "share": followed.get(cue),
                     "components_needed": needed.get(cue)}
                    for cue in (*CUES, "none")
                ]  # fmt: skip
    return curves, shares
