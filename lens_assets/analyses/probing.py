"""Probing a model: every labelled concept on every pooled (dataset, layer, pooling) it stored.

The scan reads each layer's vectors from the warehouse once (`reading`), chooses the labels that
are concepts (`probed_concepts`), turns each into a probe task (`concept_task`) whose control
task types each row by its input (`input_types`), and trains the probes in a thread pool while
the next layer loads; one probe's maths (controls, cross-validation, significance) is
`probe_maths`. The rows it returns have the columns of the `probe_results` table
(`resources.schemas.PROBE_RESULTS`).

Everything here is plain Python; the Dagster asset is a thin caller of `probe_layers`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from lens_assets.analyses.probe_maths import (
    ProbeResult,
    ProbeSettings,
    probe_in_context,
    probing_context,
)
from lens_assets.analyses.reading import (
    answer_labels,
    label_roles,
    labelled_datasets,
    load_labels,
    load_vectors,
    pooled_layers,
    row_images,
)
from lens_assets.data.rows import CONCEPT, CONTROL_TYPE, IMAGE_SEPARATOR
from lens_assets.resources.schemas import PROBE_RESULTS
from lens_assets.resources.warehouse import Warehouse

__all__ = [
    "ProbeResult",
    "ProbeSettings",
    "concept_task",
    "input_types",
    "not_a_concept",
    "picture_groups",
    "probe_layers",
    "probed_concepts",
]

# An undeclared numeric label with more distinct values than this (or than half its rows) is a
# measurement such as a coordinate, not a set of classes; clevr's count (0-10) stays a concept.
MAX_NUMERIC_CLASSES = 16


def probe_layers(
    warehouse: Warehouse,
    model: str,
    settings: ProbeSettings | None = None,
    datasets: Sequence[str] | None = None,
    concepts: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Probe each concept `probed_concepts` chooses on every pooled (dataset, layer, pooling)
    of a model, with every question kind's answer ("answer:<kind>", over that kind's rows).

    Returns one row per (dataset, layer, pooling, concept, probe kind) with the columns of the
    `probe_results` table, in a stable order (layers in natural order: layers.2 before
    layers.10).
    """
    settings = settings or ProbeSettings()
    rows: list[dict[str, Any]] = []
    pending: list[_Job] = []  # the previous layer's probes run while the next layer loads
    with (
        warehouse.connect(read_only=True) as con,
        probing_context(settings),
        ThreadPoolExecutor(settings.n_jobs) as pool,
    ):
        for dataset in labelled_datasets(con, model, datasets):
            labels = load_labels(con, dataset) | answer_labels(con, dataset)
            pictures = row_images(con, dataset)
            chosen = probed_concepts(con, dataset, labels, concepts)
            declared_type = control_type_values(con, dataset, labels)
            for layer, pooling in pooled_layers(con, model, dataset):
                keys, X = load_vectors(con, model, dataset, layer, pooling)
                groups = picture_groups([pictures.get(key, (key,)) or (key,) for key in keys])
                types = input_types(keys, pictures, declared_type)
                where = {"model": model, "dataset": dataset, "layer": layer, "pooling": pooling}
                jobs = [
                    _Job(
                        where, concept, kind,
                        pool.submit(probe_in_context, *task[:3], kind, settings, task[3]),
                    )
                    for concept in chosen
                    if (task := concept_task(X, keys, labels, concept, settings, groups, types))
                    for kind in settings.kinds
                ]  # fmt: skip
                rows.extend(job.row() for job in pending)
                pending = jobs
        rows.extend(job.row() for job in pending)
    return rows


def probed_concepts(
    warehouse: Any,
    dataset: str,
    labels: dict[str, dict[str, str]],
    requested: Sequence[str] | None = None,
) -> list[str]:
    """Which of a dataset's labels (and `answer:<kind>` concepts) are probed, in `labels`'
    order. Every probing protocol chooses its concepts here.

    Asked for by name (configs/probing.yaml `concepts`): exactly those, whatever they are.
    Otherwise a label the dataset declares a concept (its config's `concepts`, else its
    generator's) is probed and one it declares anything else (`other`, its `control_type`)
    is not; a label it declares nothing about, and each question kind's answer, is probed
    unless its values show it is no concept (`not_a_concept`: an id, a coordinate). Without
    this, a probe plot fills with coordinates, item ids and answer letters.
    """
    if requested is not None:
        return [c for c in labels if c in requested]
    roles = label_roles(warehouse, dataset)
    return [
        concept
        for concept, values in labels.items()
        if roles.get(concept) == CONCEPT or (concept not in roles and not_a_concept(values) is None)
    ]


def not_a_concept(values: Mapping[str, str]) -> str | None:
    """Why a label nobody declared is no concept to probe (None: it may be one), judged from
    its values (row -> value): an identifier has a value of its own on every row, and a
    measurement (a coordinate, an angle, a scale) is numbers with fractions or more distinct
    numbers than a set of classes has (MAX_NUMERIC_CLASSES, or half its rows)."""
    n, distinct = len(values), set(values.values())
    if n >= 2 and len(distinct) == n:
        return f"an identifier: each of its {n} rows has a value of its own"
    numbers = [_number(value) for value in distinct]
    if not numbers or any(number is None for number in numbers):
        return None
    if any(not float(number).is_integer() for number in numbers):
        return "a measurement: numbers with fractions"
    if len(distinct) > max(2, min(MAX_NUMERIC_CLASSES, n // 2)):
        return f"a measurement: {len(distinct)} different numbers over {n} rows"
    return None


def _number(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def control_type_values(
    warehouse: Any, dataset: str, labels: Mapping[str, Mapping[str, str]]
) -> Mapping[str, str] | None:
    """The values (row -> value) of the label the dataset declares its `control_type`, or
    None when it declares none."""
    roles = label_roles(warehouse, dataset)
    declared = [concept for concept, role in roles.items() if role == CONTROL_TYPE]
    return labels.get(declared[0]) if declared else None


def input_types(
    row_keys: Sequence[str],
    pictures: Mapping[str, Sequence[str]],
    declared: Mapping[str, str] | None = None,
) -> list[str]:
    """Each row's input type for the control task: what the row *is*, never what it is
    labelled (Hewitt & Liang's word type; a label-derived type would make the control task a
    function of the task and selectivity meaningless).

    The value of the dataset's declared `control_type` label where the row has one; else the
    row's images in order (content hashes: the same picture is one input under every
    question, and a byte-identical copy is the same input); else, for a text-only row, the
    row itself.
    """
    types = []
    for key in row_keys:
        if declared is not None and key in declared:
            types.append("type:" + declared[key])
        elif images := pictures.get(key):
            types.append("images:" + IMAGE_SEPARATOR.join(images))
        else:
            types.append("row:" + key)
    return types


def concept_task(
    X: np.ndarray,
    row_keys: Sequence[str],
    labels: dict[str, dict[str, str]],
    concept: str,
    settings: ProbeSettings,
    groups: Sequence[int] | None = None,
    types: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray] | None:
    """The vectors, labels, input types and fold groups for one concept, or None when it
    cannot be probed.

    Rows without a label for the concept are dropped, then classes with fewer than
    `min_per_class` examples; fewer than two classes left (a constant concept) means no probe.
    `types` (one per row, `input_types`) names each row's input for the control task; None
    makes every row its own input. `groups` (one per row) keeps rows that share a picture in
    one fold: the same image under two questions never sits in both train and test.
    """
    values = labels[concept]
    keep = np.array([key in values for key in row_keys], dtype=bool)
    y = np.array([values.get(key, "") for key in row_keys], dtype=object)
    classes, counts = np.unique(y[keep].astype(str), return_counts=True)
    frequent = set(classes[counts >= settings.min_per_class])
    keep &= np.array([value in frequent for value in y], dtype=bool)
    if len(frequent) < 2:
        return None
    if types is not None and len(types) != len(row_keys):
        raise ValueError(f"{len(types)} input types for {len(row_keys)} rows")
    every = list(row_keys) if types is None else list(types)
    kept_types = [kind for kind, kept in zip(every, keep, strict=True) if kept]
    group = np.arange(len(row_keys)) if groups is None else np.asarray(groups)
    return X[keep], y[keep].astype(str), kept_types, group[keep]


def picture_groups(images: Sequence[Sequence[str]]) -> np.ndarray:
    """One group per set of rows connected by a shared image (a scene asked six questions is
    one group; so are two pairs that share a picture)."""
    parent = list(range(len(images)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for row, ids in enumerate(images):
        for image in ids:
            if image in first:
                parent[root(row)] = root(first[image])
            else:
                first[image] = row
    return np.array([root(row) for row in range(len(images))])


@dataclass
class _Job:
    """A probe running in the pool, and where its row belongs."""

    where: dict[str, Any]
    concept: str
    kind: str
    future: Future[ProbeResult]

    def row(self) -> dict[str, Any]:
        fields = asdict(self.future.result())
        row = {**self.where, "concept": self.concept, "probe": self.kind, **fields}
        return {column: row[column] for column in PROBE_RESULTS.names}
