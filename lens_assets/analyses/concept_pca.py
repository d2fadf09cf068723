"""VLM-Lens's concept workflow (its src/concepts/pca.py, pca_knn.py and pca_separation.py), per
layer and pooling: how close each item's representation lies to each concept of a concept image
set (say one folder of pictures per colour) in the concept set's principal components.

What VLM-Lens computes, and what this module computes the same way:

- PCA is fitted on the concept set's vectors only (never on the items compared with it), then
  both are projected; a concept's centroid is the mean of its items' projections.
- The cosine similarity of each item to each centroid as the number of components k grows from
  1 to min(50, features, concept items) (VLM-Lens's `plot_pca_sensitivity_analysis`).
- A weighted k-NN over the concept items (`pca_knn.py`): item and concept items L2-normalised,
  the k most cosine-similar concept items each vote sim ** power (negative similarities count
  0) for their concept; the most voted concept wins, a tie going to the concept of the nearer
  neighbour (VLM-Lens's dict order). VLM-Lens votes with k = 5, power 1, on 5 components.
- The first two components as a 2-D scatter of concept items and items.

Beyond VLM-Lens: one PCA at the largest k serves every smaller k (the components are nested:
a full SVD's first k are the k-component PCA's, where VLM-Lens refits per k); the k-NN vote and
its accuracy are computed at every k, not only at one; and when the items are the concept set
itself, they are held out: stratified folds, the PCA, centroids and k-NN bank fitted on the
other folds only (VLM-Lens compares two separate sets and has no such case). Items carry their
expected concept where known, so each k also gets nearest-centroid and k-NN accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold

from lens_assets.analyses.reading import load_labels, load_vectors, pooled_layers
from lens_assets.resources.warehouse import Warehouse


class ConceptSettings(BaseModel):
    """`configs/concepts.yaml`: which dataset is the concept set, which datasets are compared
    with it, and the PCA and k-NN settings (VLM-Lens's defaults)."""

    model_config = ConfigDict(extra="forbid")

    concept_set: str = Field(description="The dataset whose items define the concepts.")
    concept: str = Field("colour", description="Its label naming each item's concept.")
    targets: dict[str, str | None] = Field(
        default_factory=dict,
        description="Dataset -> its label naming each item's expected concept (null: none). "
        "The concept set itself is held out by folds.",
    )
    max_components: int = Field(50, ge=1)
    knn_components: int = Field(5, ge=1, description="Components of the per-item k-NN vote.")
    knn_k: int = Field(5, ge=1)
    knn_power: float = Field(1.0, gt=0)
    folds: int = Field(5, ge=2, description="When the concept set is its own target.")
    poolings: list[str] = Field(default_factory=list, description="Empty: every pooling.")
    seed: int = 42


# ---------------------------------------------------------------------------------------------
# The maths, on arrays


def centroid_cosines(z: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(n, C, K): the cosine between each row's first k coordinates and each centroid's first k,
    for k = 1..K (cumulative sums: one pass for every k). A zero vector's cosine is 0, as in
    VLM-Lens."""
    dots = np.cumsum(z[:, None, :] * centroids[None, :, :], axis=2)
    norms = (
        np.sqrt(np.cumsum(z**2, axis=1))[:, None, :]
        * np.sqrt(np.cumsum(centroids**2, axis=1))[None, :, :]
    )
    return np.divide(dots, norms, out=np.zeros_like(dots), where=norms > 0)


def knn_votes(
    z: np.ndarray, bank: np.ndarray, bank_labels: np.ndarray, n_concepts: int, k: int, power: float
) -> tuple[np.ndarray, np.ndarray]:
    """VLM-Lens's weighted k-NN on full vectors: (votes (n, C), winners (n,)).

    Each row's `k` most cosine-similar bank vectors vote max(sim, 0) ** power for their concept
    (`bank_labels`, indices into the C concepts). The winner has the most votes; among tied
    concepts, the one whose best neighbour ranks highest (the nearest neighbour's when every
    vote is 0), which is what VLM-Lens's dict-ordered max picks. A zero row (or bank vector)
    has cosine 0 to everything."""
    zn = _unit_rows(z)
    bn = _unit_rows(bank)
    sims = zn @ bn.T
    k = min(k, bank.shape[0])
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    weights = np.clip(np.take_along_axis(sims, order, axis=1), 0.0, None) ** power
    labels = bank_labels[order]
    rows = np.arange(z.shape[0])[:, None]
    votes = np.zeros((z.shape[0], n_concepts))
    np.add.at(votes, (np.broadcast_to(rows, labels.shape), labels), weights)
    first = np.full((z.shape[0], n_concepts), np.inf)
    ranks = np.broadcast_to(np.arange(k), labels.shape)
    np.minimum.at(first, (np.broadcast_to(rows, labels.shape), labels), ranks)
    tied = votes == votes.max(axis=1, keepdims=True)
    winners = np.where(tied, first, np.inf).argmin(axis=1)
    return votes, winners


def _unit_rows(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)


@dataclass
class Comparison:
    """Items against the concepts in one representation, at k = 1..K components."""

    concepts: list[str]
    similarities: np.ndarray  # (n, C, K) cosine to each concept's centroid
    votes: np.ndarray  # (n, C, K) weighted k-NN votes
    knn: np.ndarray  # (n, K) index of the k-NN winner
    explained: np.ndarray  # (K,) cumulative explained variance ratio (concept set, all items)
    scatter: dict[str, np.ndarray] = field(default_factory=dict)  # first two components

    @property
    def components(self) -> int:
        return self.similarities.shape[2]


def _fit(x: np.ndarray, components: int, seed: int) -> PCA:
    # Full SVD: deterministic, and its first k components are the k-component PCA's.
    return PCA(n_components=components, svd_solver="full", random_state=seed).fit(x)


def _against(
    train: np.ndarray, train_y: np.ndarray, test: np.ndarray, n_concepts: int, components: int,
    k: int, power: float, seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Similarities, votes and k-NN winners of `test` against a concept set `train`."""
    pca = _fit(train, components, seed)
    z_train, z_test = pca.transform(train), pca.transform(test)
    centroids = np.stack([z_train[train_y == c].mean(axis=0) for c in range(n_concepts)])
    similarities = centroid_cosines(z_test, centroids)
    votes = np.zeros((len(test), n_concepts, components))
    winners = np.zeros((len(test), components), dtype=np.int64)
    for j in range(components):
        votes[:, :, j], winners[:, j] = knn_votes(
            z_test[:, : j + 1], z_train[:, : j + 1], train_y, n_concepts, k, power
        )
    return similarities, votes, winners


def compare_with_concepts(
    concept_x: np.ndarray,
    concept_labels: Sequence[str],
    target_x: np.ndarray | None,
    settings: ConceptSettings,
) -> Comparison:
    """The concept workflow for one representation: `target_x` against the concept set
    (`concept_x`, one concept label per row), or, with `target_x` None, the concept set against
    itself held out (stratified folds; the PCA, centroids and k-NN bank of each fold come from
    the other folds). Raises ValueError when there is too little to compare."""
    x = np.asarray(concept_x, dtype=np.float64)
    labels = np.asarray([str(v) for v in concept_labels])
    if x.ndim != 2 or len(labels) != len(x):
        raise ValueError(f"concept vectors {x.shape} and {len(labels)} labels do not match")
    found, y, counts = np.unique(labels, return_inverse=True, return_counts=True)
    concepts = [str(c) for c in found]
    if len(concepts) < 2:
        raise ValueError(f"the concept set has {len(concepts)} concept(s); it needs two or more")
    n, dim = x.shape
    full_top = min(settings.max_components, dim, n)
    full = _fit(x, full_top, settings.seed)
    common = dict(k=settings.knn_k, power=settings.knn_power, seed=settings.seed)
    if target_x is None:
        folds = min(settings.folds, int(counts.min()))
        if folds < 2:
            raise ValueError(
                f"concept {concepts[int(counts.argmin())]!r} has one item: holding the concept set "
                "out against itself needs two or more items per concept"
            )
        top = min(full_top, n - math.ceil(n / folds))
        similarities = np.zeros((n, len(concepts), top))
        votes = np.zeros((n, len(concepts), top))
        winners = np.zeros((n, top), dtype=np.int64)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=settings.seed)
        for train, test in splitter.split(x, y):
            s, v, w = _against(x[train], y[train], x[test], len(concepts), top, **common)
            similarities[test], votes[test], winners[test] = s, v, w
        scatter = {"concepts": full.transform(x)[:, :2]} if full_top >= 2 else {}
    else:
        target = np.asarray(target_x, dtype=np.float64)
        if target.ndim != 2 or target.shape[1] != dim:
            raise ValueError(f"target vectors {target.shape} do not match the concepts' {dim}")
        top = full_top
        similarities, votes, winners = _against(x, y, target, len(concepts), top, **common)
        scatter = (
            {"concepts": full.transform(x)[:, :2], "targets": full.transform(target)[:, :2]}
            if top >= 2
            else {}
        )
    explained = np.cumsum(full.explained_variance_ratio_)[:top]
    return Comparison(concepts, similarities, votes, winners, explained, scatter)


def layer_summary(comparison: Comparison, truth: Sequence[str | None]) -> list[dict[str, Any]]:
    """Per k: items with a known concept, the share nearest their own centroid and the share
    the k-NN gives their own concept, and their mean cosine to their own centroid and to the
    nearest other one (None where no item's concept is one of the concepts)."""
    index = {c: i for i, c in enumerate(comparison.concepts)}
    known = np.array([t in index for t in truth], dtype=bool)
    own = np.array([index[t] for t in truth if t in index], dtype=np.int64)
    rows = []
    for j in range(comparison.components):
        sims = comparison.similarities[known, :, j]
        row: dict[str, Any] = {
            "components": j + 1,
            "n": int(known.sum()),
            "explained_variance": float(comparison.explained[j]),
            "centroid_accuracy": None,
            "knn_accuracy": None,
            "own_similarity": None,
            "other_similarity": None,
        }
        if len(own):
            mine = sims[np.arange(len(own)), own]
            others = sims.copy()
            others[np.arange(len(own)), own] = -np.inf
            row.update(
                centroid_accuracy=float(np.mean(sims.argmax(axis=1) == own)),
                knn_accuracy=float(np.mean(comparison.knn[known, j] == own)),
                own_similarity=float(mine.mean()),
                other_similarity=float(others.max(axis=1).mean()) if sims.shape[1] > 1 else None,
            )
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# The warehouse side


@dataclass
class Scatter:
    """The first two components of one (target, layer, pooling), for the picture."""

    dataset: str
    layer: str
    pooling: str
    concepts: list[str]
    concept_points: np.ndarray
    concept_labels: list[str]
    target_points: np.ndarray | None
    target_labels: list[str | None]
    explained: tuple[float, float]


@dataclass
class ConceptResults:
    items: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    scatters: list[Scatter] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def concept_pca_rows(warehouse: Warehouse, model: str, settings: ConceptSettings) -> ConceptResults:
    """Every target against the concept set, for each layer and pooling both have for `model`
    (rows of tables concept_pca and concept_pca_layers, and the scatters)."""
    out = ConceptResults()
    targets = settings.targets or {settings.concept_set: settings.concept}
    with warehouse.connect(read_only=True) as con:
        concept_labels = load_labels(con, settings.concept_set)
        if settings.concept not in concept_labels:
            if not pooled_layers(con, model, settings.concept_set):
                out.skipped.append(f"{model} has no activations of {settings.concept_set}")
                return out
            raise ValueError(
                f"concept set {settings.concept_set!r} has no label {settings.concept!r} (its "
                f"labels: {sorted(concept_labels) or 'none'}); set `concept` in "
                "configs/concepts.yaml, or label the set (folder kind: concept_from: subfolder)"
            )
        named = concept_labels[settings.concept]
        pairs = [
            p
            for p in pooled_layers(con, model, settings.concept_set)
            if not settings.poolings or p[1] in settings.poolings
        ]
        for dataset, truth_label in targets.items():
            held_out = dataset == settings.concept_set
            present = set(pooled_layers(con, model, dataset))
            if not present:
                out.skipped.append(f"{model} has no activations of {dataset}")
                continue
            truths = named if held_out else load_labels(con, dataset).get(truth_label or "", {})
            for layer, pooling in pairs:
                if (layer, pooling) not in present:
                    continue
                keys, x = load_vectors(con, model, settings.concept_set, layer, pooling)
                keep = [i for i, key in enumerate(keys) if key in named]
                if len(keep) < 2 or np.ptp(x[keep], axis=0).max(initial=0.0) == 0.0:
                    continue  # one vector for every item (a text tower): nothing to compare
                keys, x = [keys[i] for i in keep], x[keep]
                labels = [named[key] for key in keys]
                if held_out:
                    target_keys, target_x = keys, None
                else:
                    target_keys, target_x = load_vectors(con, model, dataset, layer, pooling)
                try:
                    comparison = compare_with_concepts(x, labels, target_x, settings)
                except ValueError as error:
                    out.skipped.append(f"{dataset} / {layer} / {pooling}: {error}")
                    continue
                truth = [truths.get(key) for key in target_keys]
                where = {
                    "model": model, "dataset": dataset, "concept_dataset": settings.concept_set,
                    "layer": layer, "pooling": pooling,
                }  # fmt: skip
                _item_rows(out.items, where, comparison, target_keys, truth, settings)
                out.layers += [{**where, **row} for row in layer_summary(comparison, truth)]
                if comparison.scatter:
                    shown = [] if held_out else truth
                    out.scatters.append(_scatter(where, comparison, labels, shown))
    return out


def _scatter(
    where: dict[str, str], comparison: Comparison, labels: list[str], truth: list[str | None]
) -> Scatter:
    explained = comparison.explained
    return Scatter(
        dataset=where["dataset"],
        layer=where["layer"],
        pooling=where["pooling"],
        concepts=comparison.concepts,
        concept_points=comparison.scatter["concepts"],
        concept_labels=labels,
        target_points=comparison.scatter.get("targets"),
        target_labels=truth,
        explained=(float(explained[0]), float(explained[1] - explained[0])),
    )


def _item_rows(
    rows: list[dict[str, Any]], where: dict[str, str], comparison: Comparison,
    keys: Sequence[str], truth: Sequence[str | None], settings: ConceptSettings,
) -> None:  # fmt: skip
    """One row per (item, concept): its cosine curve and its k-NN vote at knn_components."""
    at = min(settings.knn_components, comparison.components) - 1
    for i, key in enumerate(keys):
        for c, concept in enumerate(comparison.concepts):
            rows.append(
                {
                    **where,
                    "row_key": key,
                    "truth": truth[i],
                    "concept": concept,
                    "similarities": comparison.similarities[i, c].tolist(),
                    "knn_components": at + 1,
                    "knn_vote": float(comparison.votes[i, c, at]),
                    "knn_concept": comparison.concepts[comparison.knn[i, at]],
                }
            )
