"""Pictures of the concept workflow (asset concept_pca) for the UI and `warehouse/reports/`:
the curves over the number of components, and VLM-Lens's 2-D scatter of the first two, in
the conventions of `figures`."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.colors import is_color_like

from lens_assets.analyses.concept_pca import Scatter
from lens_assets.analyses.figures import drawn, panel_grid, plt, save, shared_legend
from lens_assets.capture.modules import model_order, short_layer

PREFERRED = ("mean_image", "mean", "cls", "last")  # the scatter's pooling, where present
MAX_PANELS = 24  # more layers than this: evenly spaced ones are drawn (the table has them all)


def _spread(items: Sequence[Any], most: int) -> list[Any]:
    """At most `most` of `items`, evenly spaced, first and last kept."""
    if len(items) <= most:
        return list(items)
    step = (len(items) - 1) / (most - 1)
    return [items[round(i * step)] for i in range(most)]


@drawn
def concept_curves(rows: Sequence[dict[str, Any]], model: str, out: Path) -> Path | None:
    """Per (dataset, pooling): nearest-centroid accuracy (solid) and k-NN accuracy (dashed) by
    number of components, one line per layer, darker for deeper layers; and the cosine to the
    own centroid minus that to the nearest other one."""
    panels: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["centroid_accuracy"] is not None:
            panels[(row["dataset"], row["pooling"])].append(row)
    if not panels:
        return None
    figure, axes = panel_grid(2 * len(panels), columns=2)
    colours = plt.get_cmap("viridis_r")
    for index, ((dataset, pooling), members) in enumerate(sorted(panels.items())):
        accuracy, margin = axes[2 * index], axes[2 * index + 1]
        layers = _spread(sorted({r["layer"] for r in members}, key=model_order), 10)
        for depth, layer in enumerate(layers):
            points = sorted(
                (r for r in members if r["layer"] == layer), key=lambda r: r["components"]
            )
            k = [r["components"] for r in points]
            colour = colours(depth / max(1, len(layers) - 1))
            accuracy.plot(k, [r["centroid_accuracy"] for r in points], "-", color=colour,
                          label=short_layer(layer))  # fmt: skip
            accuracy.plot(k, [r["knn_accuracy"] for r in points], "--", color=colour, alpha=0.7)
            if points[0]["other_similarity"] is not None:
                margin.plot(k, [r["own_similarity"] - r["other_similarity"] for r in points], "-",
                            color=colour)  # fmt: skip
        accuracy.set_title(f"{dataset} / {pooling}: own concept (dashed: k-NN)")
        accuracy.set_ylim(-0.02, 1.02)
        accuracy.set_xlabel("PCA components")
        margin.axhline(0.0, color="grey", linestyle=":")
        margin.set_title(f"{dataset} / {pooling}: cos(own) - cos(nearest other)")
        margin.set_xlabel("PCA components")
    shared_legend(figure, axes, columns=5)
    figure.suptitle(f"{model}: items against the concept centroids")
    return save(figure, out)


def _colour_of(concepts: Sequence[str]) -> dict[str, Any]:
    """A concept named after a colour is drawn in it; the others get the tab20 colours."""
    palette = plt.get_cmap("tab20")
    return {c: c if is_color_like(c) else palette(i % 20) for i, c in enumerate(concepts)}


@drawn
def concept_scatter(scatters: Sequence[Scatter], model: str, out: Path) -> Path | None:
    """VLM-Lens's PCA scatter: per layer, the concept items (circles) on the concept set's first
    two components and, for the first target other than the concept set, its items (triangles,
    in their expected concept's colour; black when unknown). One pooling: mean_image where
    there is one (`PREFERRED`)."""
    if not scatters:
        return None
    present = {s.pooling for s in scatters}
    pooling = next((p for p in PREFERRED if p in present), min(present))
    others = sorted({s.dataset for s in scatters if s.target_points is not None})
    shown = [s for s in scatters if s.pooling == pooling]
    by_layer: dict[str, Scatter] = {}
    for s in shown:  # a layer's target panel if there is one, else its held-out one
        if s.layer not in by_layer or (others and s.dataset == others[0]):
            by_layer[s.layer] = s
    layers = _spread(sorted(by_layer, key=model_order), MAX_PANELS)
    figure, axes = panel_grid(len(layers), columns=2)
    for axis, layer in zip(axes, layers, strict=False):
        s = by_layer[layer]
        colour = _colour_of(s.concepts)
        for concept in s.concepts:
            points = s.concept_points[[label == concept for label in s.concept_labels]]
            axis.scatter(points[:, 0], points[:, 1], s=22, color=colour[concept], marker="o",
                         edgecolors="black", linewidths=0.4, label=concept)  # fmt: skip
        if s.target_points is not None:
            axis.scatter(
                s.target_points[:, 0], s.target_points[:, 1], s=34, marker="^",
                color=[colour.get(t, "black") if t else "black" for t in s.target_labels],
                edgecolors="black", linewidths=0.6,
            )  # fmt: skip
        axis.set_title(short_layer(layer))
        axis.set_xlabel(f"PC1 ({s.explained[0]:.2f} of the variance)")
        axis.set_ylabel(f"PC2 ({s.explained[1]:.2f})")
    shared_legend(figure, axes, columns=6)
    targets = sorted({s.dataset for s in by_layer.values() if s.target_points is not None})
    triangles = f"; triangles: {', '.join(targets)}" if targets else ""
    figure.suptitle(f"{model}: concept set on its first two components ({pooling}{triangles})")
    return save(figure, out)
