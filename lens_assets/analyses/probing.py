"""Probing a model: every labelled concept on every pooled (dataset, layer, pooling) it stored.

The scan reads each layer's vectors from the warehouse once (`reading`), turns each concept
into a probe task (`concept_task`), and trains the probes in a thread pool while the next layer
loads; one probe's maths (controls, cross-validation, significance) is `probe_maths`. The rows
it returns have the columns of the `probe_results` table (`resources.schemas.PROBE_RESULTS`).

Everything here is plain Python; the Dagster asset is a thin caller of `probe_layers`.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    labelled_datasets,
    load_labels,
    load_vectors,
    pooled_layers,
    row_images,
)
from lens_assets.resources.schemas import PROBE_RESULTS
from lens_assets.resources.warehouse import Warehouse

__all__ = [
    "ProbeResult",
    "ProbeSettings",
    "concept_task",
    "picture_groups",
    "probe_layers",
    "probed_concepts",
]


def probe_layers(
    warehouse: Warehouse,
    model: str,
    settings: ProbeSettings | None = None,
    datasets: Sequence[str] | None = None,
    concepts: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Probe every labelled concept on every pooled (dataset, layer, pooling) of a model, and
    every question kind's answer ("answer:<kind>", over that kind's rows).

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
            for layer, pooling in pooled_layers(con, model, dataset):
                keys, X = load_vectors(con, model, dataset, layer, pooling)
                groups = picture_groups([pictures.get(key, (key,)) or (key,) for key in keys])
                where = {"model": model, "dataset": dataset, "layer": layer, "pooling": pooling}
                jobs = [
                    _Job(
                        where, concept, kind,
                        pool.submit(probe_in_context, *task[:3], kind, settings, task[3]),
                    )
                    for concept in chosen
                    if (task := concept_task(X, keys, labels, concept, settings, groups))
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
    """Which of a dataset's labelled concepts are probed: those asked for (None: every one).
    Every probing protocol chooses its concepts here."""
    return [c for c in labels if requested is None or c in requested]


def concept_task(
    X: np.ndarray,
    row_keys: Sequence[str],
    labels: dict[str, dict[str, str]],
    concept: str,
    settings: ProbeSettings,
    groups: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray] | None:
    """The vectors, labels, input types and fold groups for one concept, or None when it
    cannot be probed.

    Rows without a label for the concept are dropped, then classes with fewer than
    `min_per_class` examples; fewer than two classes left (a constant concept) means no probe.
    An input type is the row's whole label tuple over the dataset's concepts, so rows that
    look identical to the annotation get the same control label. `groups` (one per row) keeps
    rows that share a picture in one fold: the same image under two questions never sits in
    both train and test.
    """
    values = labels[concept]
    keep = np.array([key in values for key in row_keys], dtype=bool)
    y = np.array([values.get(key, "") for key in row_keys], dtype=object)
    classes, counts = np.unique(y[keep].astype(str), return_counts=True)
    frequent = set(classes[counts >= settings.min_per_class])
    keep &= np.array([value in frequent for value in y], dtype=bool)
    if len(frequent) < 2:
        return None
    ordered = sorted(labels)
    types = [
        "\x1f".join(str(labels[c].get(key)) for c in ordered)
        for key, kept in zip(row_keys, keep, strict=True)
        if kept
    ]
    group = np.arange(len(row_keys)) if groups is None else np.asarray(groups)
    return X[keep], y[keep].astype(str), types, group[keep]


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
