"""Reading the warehouse into arrays: the one place the analyses load vectors and labels.

Probes, CKA, the Stroop study, vision-vs-VLM and the interventions all read through here, so a
faster read path or a schema change lands once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lens_assets.capture.modules import natural_key
from lens_assets.capture.token_roles import POOLED_ROWS
from lens_assets.resources import reads
from lens_assets.resources.reads import list_column_to_matrix as list_column_to_matrix
from lens_assets.resources.warehouse import Warehouse

# A warehouse (vectors: its read-only handle, opened once per process; other reads: one
# connection per call) or a connection already open on it (one for many calls: opening one
# attaches the DuckLake, about 0.1 s).
Source = Warehouse | duckdb.DuckDBPyConnection


def load_vectors(
    warehouse: Source,
    model: str,
    dataset: str,
    layer: str,
    pooling: str,
    prompt: str | None = None,
) -> tuple[list[str], np.ndarray]:
    """Row keys (sorted) and their (n, dim) float32 vectors for one layer and pooling: one
    vector per dataset row (a row is its images and its own prompt).

    Read straight from the lake's Parquet files at memory speed (`resources.reads`: the
    latest snapshot's files, pruned by row-group statistics, deletes honoured), on a
    read-only handle kept open per process; the SQL route where that cannot vouch for itself.
    """
    selection = reads.Selection(model, dataset, layer, pooling, prompt)
    vectors = reads.read_vectors(warehouse, selection)
    return vectors.row_keys.to_pylist(), vectors.matrix


def query(source: Source, sql: str, params: Sequence[Any]) -> pa.Table:
    if isinstance(source, Warehouse):
        return source.fetch_arrow(sql, params)
    return source.execute(sql, list(params)).to_arrow_table()


def load_labels(warehouse: Source, dataset: str) -> dict[str, dict[str, str]]:
    """Ground truth per row as concept -> row_key -> value; NULL values are left out."""
    table = query(
        warehouse,
        """
        SELECT concept, row_key, min(value) AS value, count(DISTINCT value) AS n_values
        FROM row_labels WHERE dataset = ? AND value IS NOT NULL
        GROUP BY ALL ORDER BY concept, row_key
        """,
        [dataset],
    )
    return _by_concept(table, dataset, "row_key")


def load_image_labels(warehouse: Source, dataset: str) -> dict[str, dict[str, str]]:
    """Ground truth per image (of the one-image rows) as concept -> image_id -> value."""
    table = query(
        warehouse,
        """
        SELECT concept, image_id, min(value) AS value, count(DISTINCT value) AS n_values
        FROM image_labels WHERE dataset = ? AND value IS NOT NULL
        GROUP BY ALL ORDER BY concept, image_id
        """,
        [dataset],
    )
    return _by_concept(table, dataset, "image_id")


ANSWER_CONCEPT = "answer:"  # + the question kind: what a question-type probe predicts


def answer_labels(warehouse: Source, dataset: str) -> dict[str, dict[str, str]]:
    """Each question kind's expected answers as a concept of its own ("answer:colour",
    "answer:count", ...): VLM-Lens's CLEVR layout probes every question type's answer from the
    activations of that question's rows."""
    table = query(
        warehouse,
        "SELECT kind, row_key, any_value(answer) AS answer FROM dataset_rows "
        "WHERE dataset = ? AND answer IS NOT NULL AND kind IS NOT NULL GROUP BY ALL "
        "ORDER BY kind, row_key",
        [dataset],
    )
    labels: dict[str, dict[str, str]] = {}
    columns = (table.column(name).to_pylist() for name in ("kind", "row_key", "answer"))
    for kind, key, answer in zip(*columns, strict=True):
        labels.setdefault(ANSWER_CONCEPT + kind, {})[key] = answer
    return labels


def label_roles(warehouse: Source, dataset: str) -> dict[str, str]:
    """What the dataset declares each of its labels to be (`row_labels.role`: concept,
    control_type, other); a label it declares nothing about is left out. A warehouse not yet
    migrated to the `role` column (opened read-only) declares nothing."""
    columns = query(warehouse, "SELECT * FROM row_labels LIMIT 0", []).column_names
    if "role" not in columns:
        return {}
    table = query(
        warehouse,
        "SELECT concept, min(role) AS role FROM row_labels "
        "WHERE dataset = ? AND role IS NOT NULL GROUP BY concept ORDER BY concept",
        [dataset],
    )
    return dict(zip(*(table.column(name).to_pylist() for name in ("concept", "role")), strict=True))


def row_images(warehouse: Source, dataset: str) -> dict[str, tuple[str, ...]]:
    """Each row's image ids, in order: what probe folds group by."""
    table = query(
        warehouse,
        "SELECT row_key, any_value(image_ids) AS image_ids FROM dataset_rows "
        "WHERE dataset = ? GROUP BY row_key",
        [dataset],
    )
    keys, images = table.column("row_key").to_pylist(), table.column("image_ids").to_pylist()
    return {key: tuple(ids or ()) for key, ids in zip(keys, images, strict=True)}


def _by_concept(table: pa.Table, dataset: str, key: str) -> dict[str, dict[str, str]]:
    conflicting = pc.filter(table, pc.greater(table.column("n_values"), 1))
    if conflicting.num_rows:
        first = conflicting.slice(0, 1).to_pylist()[0]
        raise ValueError(
            f"{dataset}: {key} {first[key]} has {first['n_values']} different values "
            f"for concept {first['concept']!r} ({conflicting.num_rows} such labels)"
        )
    labels: dict[str, dict[str, str]] = {}
    columns = (table.column(name).to_pylist() for name in ("concept", key, "value"))
    for concept, image_id, value in zip(*columns, strict=True):
        labels.setdefault(concept, {})[image_id] = value
    return labels


def labels_by_image(warehouse: Source, dataset: str) -> dict[str, dict[str, str]]:
    """The same ground truth the other way round, image_id -> concept -> value: what a task
    reads about one image (its correspondence points, its Stroop cues)."""
    by_image: dict[str, dict[str, str]] = {}
    for concept, values in load_image_labels(warehouse, dataset).items():
        for image_id, value in values.items():
            by_image.setdefault(image_id, {})[concept] = value
    return by_image


def labelled_datasets(con: Source, model: str, datasets: Sequence[str] | None) -> list[str]:
    found = query(
        con,
        """
        SELECT DISTINCT dataset FROM activations
        WHERE model = ? AND dataset IN (
            SELECT DISTINCT dataset FROM row_labels
            UNION SELECT DISTINCT dataset FROM dataset_rows WHERE answer IS NOT NULL
        )
        ORDER BY dataset
        """,
        [model],
    ).column(0)
    return [d for d in found.to_pylist() if datasets is None or d in datasets]


def pooled_layers(con: Source, model: str, dataset: str) -> list[tuple[str, str]]:
    found = query(
        con,
        f"""
        SELECT DISTINCT layer, pooling FROM activations
        WHERE model = ? AND dataset = ? AND {POOLED_ROWS}
        """,
        [model, dataset],
    ).to_pylist()
    pairs = [(p["layer"], p["pooling"]) for p in found]
    return sorted(pairs, key=lambda pair: (natural_key(pair[0]), pair[1]))
