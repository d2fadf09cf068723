"""Layer-by-layer similarity (linear CKA) within a model and against every other model on
the same images. A model's partition computes only the pairs that involve it."""

from __future__ import annotations

from collections.abc import Iterator
from itertools import combinations
from typing import Any

import numpy as np

from lens_assets.analyses.reading import load_vectors
from lens_assets.analyses.similarity import linear_cka
from lens_assets.capture.modules import natural_key
from lens_assets.capture.token_roles import POOLED_ROWS
from lens_assets.resources.warehouse import Warehouse

Layer = tuple[list[str], np.ndarray]  # image ids (sorted) and their vectors


def _groups(con: Any, model: str) -> list[tuple[str, str, list[str]]]:
    """(dataset, pooling, layers) of a model's pooled rows."""
    rows = con.execute(
        "SELECT dataset, pooling, list(DISTINCT layer) FROM activations "
        f"WHERE model = ? AND {POOLED_ROWS} GROUP BY ALL ORDER BY ALL",
        [model],
    ).fetchall()
    return [(d, p, sorted(layers, key=natural_key)) for d, p, layers in rows]


def _others(con: Any, model: str, dataset: str, pooling: str) -> dict[str, list[str]]:
    rows = con.execute(
        "SELECT model, list(DISTINCT layer) FROM activations "
        "WHERE model <> ? AND dataset = ? AND pooling = ? GROUP BY model ORDER BY model",
        [model, dataset, pooling],
    ).fetchall()
    return {m: sorted(layers, key=natural_key) for m, layers in rows}


def _aligned(a: Layer, b: Layer) -> tuple[np.ndarray, np.ndarray]:
    """The rows of both on the images they share, in one order."""
    shared = sorted(set(a[0]) & set(b[0]))
    index_a = {image: i for i, image in enumerate(a[0])}
    index_b = {image: i for i, image in enumerate(b[0])}
    return (
        a[1][[index_a[i] for i in shared]],
        b[1][[index_b[i] for i in shared]],
    )


def _row(model_a: str, layer_a: str, a: Layer, model_b: str, layer_b: str, b: Layer,
         dataset: str, pooling: str) -> dict[str, Any]:  # fmt: skip
    x, y = _aligned(a, b)
    n = len(x)
    return {
        "model_a": model_a, "layer_a": layer_a, "model_b": model_b, "layer_b": layer_b,
        "dataset": dataset, "pooling": pooling, "n": n,
        "cka": linear_cka(x, y) if n >= 2 else None,
        "cka_unbiased": linear_cka(x, y, unbiased=True) if n >= 4 else None,
    }  # fmt: skip


def similarity_rows(warehouse: Warehouse, model: str) -> Iterator[dict[str, Any]]:
    """Every within-model layer pair of `model`, and every (layer of `model`, layer of another
    model) pair on the images both saw, per dataset and pooling."""
    with warehouse.connect(read_only=True) as con:
        for dataset, pooling, layers in _groups(con, model):
            mine = {layer: load_vectors(con, model, dataset, layer, pooling) for layer in layers}
            for la, lb in combinations(layers, 2):
                yield _row(model, la, mine[la], model, lb, mine[lb], dataset, pooling)
            for other, other_layers in _others(con, model, dataset, pooling).items():
                for lo in other_layers:
                    theirs = load_vectors(con, other, dataset, lo, pooling)
                    for layer in layers:
                        yield _row(model, layer, mine[layer], other, lo, theirs, dataset, pooling)
