"""Pictures for the UI and `warehouse/reports/`: plain matplotlib, no display needed, every one
in the conventions of `figures` (layers in model order, one legend below, UI width)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import TwoSlopeNorm

from lens_assets.analyses.figures import (
    WIDTH,
    drawn,
    layer_axis,
    mark_stages,
    ordered_layers,
    panel_grid,
    plt,
    save,
    shared_legend,
)
from lens_assets.capture.modules import short_layer

MAX_PANELS = 18  # more concepts than this: the most selective ones are drawn
MIN_CKA_IMAGES = 3  # CKA over fewer images is not a number to read (as closest_layers ranks)

__all__ = [
    "behaviour_gap",
    "cka_heatmap",
    "dominance_by_layer",
    "layer_curves",
    "plt",
    "probe_curves",
    "selectivity_heatmap",
    "vision_vs_vlm_by_layer",
]


def _series(row: dict[str, Any]) -> str:
    return f"{row['pooling']} · {row['probe']}"


def _control(row: dict[str, Any]) -> float:
    """The probe's control: Hewitt & Liang's control task (protocol cv), else the shuffled-label
    control on the held-out split (protocol vlm-lens, which has no control task)."""
    value = row.get("control_accuracy")
    return float(row["shuffled_accuracy"] if value is None else value)


def _control_name(rows: Sequence[dict[str, Any]]) -> str:
    if all(r.get("control_accuracy") is None for r in rows):
        return "shuffled-label control"
    return "control task"


def _selectivity(row: dict[str, Any]) -> float:
    return float(row["accuracy"]) - _control(row)


@drawn
def probe_curves(rows: Sequence[dict[str, Any]], model: str, out: Path) -> Path | None:
    """One panel per concept: probe accuracy by layer (solid) and its control task (dashed),
    one colour per (pooling, probe kind)."""
    panels: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        panels[(row["dataset"], row["concept"])].append(row)
    if not panels:
        return None
    chosen = sorted(panels, key=lambda key: -max(_selectivity(r) for r in panels[key]))
    chosen = sorted(chosen[:MAX_PANELS])
    colours = {name: f"C{i % 10}" for i, name in enumerate(sorted({_series(r) for r in rows}))}
    figure, axes = panel_grid(len(chosen), columns=2)
    for axis, key in zip(axes, chosen, strict=True):
        members = panels[key]
        layers = ordered_layers([r["layer"] for r in members])
        position = {layer: i for i, layer in enumerate(layers)}
        by_series: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in members:
            by_series[_series(r)].append(r)
        for name, points in sorted(by_series.items()):
            points.sort(key=lambda r: position[r["layer"]])
            x = [position[r["layer"]] for r in points]
            axis.plot(x, [r["accuracy"] for r in points], "-o", ms=3, color=colours[name],
                      label=name)  # fmt: skip
            axis.plot(x, [_control(r) for r in points], "--", color=colours[name], alpha=0.6)
        layer_axis(axis, layers, f"{key[1]} ({key[0]})", "accuracy", max_names=8)
    axes[0].plot([], [], "--", color="grey", label=f"{_control_name(rows)} (dashed)")
    shared_legend(figure, axes)
    shown = "" if len(chosen) == len(panels) else f" ({len(chosen)} most selective concepts)"
    figure.suptitle(f"{model}: probe accuracy by layer{shown}")
    return save(figure, out)


@drawn
def selectivity_heatmap(rows: Sequence[dict[str, Any]], model: str, out: Path) -> Path | None:
    """Layers x concepts: each cell the selectivity (accuracy - control) of the best pooling
    at that layer, linear probes where there are any."""
    kinds = {r["probe"] for r in rows}
    kind = "linear" if "linear" in kinds else min(kinds, default=None)
    best: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["probe"] == kind and (value := _selectivity(r)) == value:
            cell = best[(r["dataset"], r["concept"])]
            cell[r["layer"]] = max(cell.get(r["layer"], -np.inf), value)
    if not best:
        return None
    concepts = sorted(best)
    layers = ordered_layers([layer for cells in best.values() for layer in cells])
    grid = np.full((len(concepts), len(layers)), np.nan)
    for i, key in enumerate(concepts):
        for j, layer in enumerate(layers):
            grid[i, j] = best[key].get(layer, np.nan)
    height = min(0.28 * len(concepts) + 1.6, 14.0)
    figure, axis = plt.subplots(figsize=(WIDTH, height), layout="constrained")
    limit = max(0.1, float(np.nanmax(np.abs(grid))))
    shown = axis.imshow(grid, aspect="auto", cmap="RdBu_r", interpolation="nearest",
                        norm=TwoSlopeNorm(0.0, -limit, limit))  # fmt: skip
    axis.set_yticks(range(len(concepts)))
    axis.set_yticklabels([f"{concept} ({dataset})" for dataset, concept in concepts])
    axis.set_xticks(range(len(layers)))
    step = max(1, len(layers) // 14)
    axis.set_xticklabels(
        [short_layer(layer) if i % step == 0 else "" for i, layer in enumerate(layers)],
        rotation=35, ha="right",
    )  # fmt: skip
    mark_stages(axis, layers)
    figure.colorbar(shown, ax=axis, label=f"accuracy - {_control_name(rows)}", shrink=0.8)
    figure.suptitle(f"{model}: selectivity by layer and concept ({kind} probes, best pooling)")
    return save(figure, out)


@drawn
def dominance_by_layer(rows: Sequence[dict[str, Any]], model: str, out: Path) -> Path | None:
    """Share of disagreeing Stroop items following each cue, by layer, one panel per
    (dataset, pooling)."""
    panels: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["share"] is not None:
            panels[(row["dataset"], row["pooling"])].append(row)
    if not panels:
        return None
    figure, axes = panel_grid(len(panels), columns=2)
    for axis, ((dataset, pooling), members) in zip(axes, sorted(panels.items()), strict=True):
        layers = ordered_layers([r["layer"] for r in members])
        for index, cue in enumerate(("word", "font", "background", "none")):
            points = {r["layer"]: r["share"] for r in members if r["cue"] == cue}
            axis.plot(range(len(layers)), [points.get(layer, 0.0) for layer in layers], "-o",
                      ms=3, color=f"C{index}", label=cue)  # fmt: skip
        layer_axis(axis, layers, f"{dataset} / {pooling}", "share of conflicting items",
                   max_names=8)  # fmt: skip
    shared_legend(figure, axes)
    figure.suptitle(f"{model}: which cue the representation follows")
    return save(figure, out)


@drawn
def vision_vs_vlm_by_layer(rows: Sequence[dict[str, Any]], model: str, out: Path) -> Path | None:
    """Accuracy from each layer's features (vision, projector, LLM along x), with the model's
    own answers and chance as horizontal lines; one panel per dataset."""
    panels: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        panels[(row["dataset"], row["task"])].append(row)
    if not panels:
        return None
    figure, axes = panel_grid(len(panels), columns=2)
    for axis, ((dataset, task), members) in zip(axes, sorted(panels.items()), strict=True):
        members = sorted(members, key=lambda r: r["layer_order"])
        x = range(len(members))
        axis.plot(x, [r["feature_accuracy"] for r in members], "-o", ms=3, color="C0",
                  label="from features")  # fmt: skip
        axis.axhline(members[0]["chance"], color="grey", linestyle=":", label="chance")
        vlm = members[0]["vlm_accuracy"]
        if vlm is not None:
            axis.axhline(vlm, color="C3", linestyle="--", label="VLM answer")
        layer_axis(axis, [r["layer"] for r in members], f"{dataset} ({task})", "accuracy",
                   max_names=8 if len(panels) > 1 else 14)  # fmt: skip
    shared_legend(figure, axes)
    figure.suptitle(f"{model}: the task solved from each layer's patch features")
    return save(figure, out)


@drawn
def layer_curves(
    rows: Sequence[dict[str, Any]],
    value: str,
    series: str,
    title: str,
    ylabel: str,
    out: Path,
    unit_range: bool = True,
) -> Path | None:
    """Mean of `value` by layer, one line per `series` value: attention's image share, the
    logit lens's label probability, patching's recovery. Layers in model order."""
    points: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row[value] is not None and row[value] == row[value]:  # NaN: no contrast to recover
            points[str(row[series])][row["layer"]].append(float(row[value]))
    if not points:
        return None
    layers = ordered_layers([layer for by_layer in points.values() for layer in by_layer])
    figure, (axis,) = panel_grid(1, height=3.4)
    for index, (name, by_layer) in enumerate(sorted(points.items())):
        x = [i for i, layer in enumerate(layers) if layer in by_layer]
        y = [sum(by_layer[layers[i]]) / len(by_layer[layers[i]]) for i in x]
        axis.plot(x, y, "-o", ms=3, color=f"C{index % 10}", label=name)
    layer_axis(axis, layers, title, ylabel, unit_range=unit_range)
    shared_legend(figure, [axis])
    return save(figure, out)


@drawn
def cka_heatmap(rows: Sequence[dict[str, Any]], model: str, other: str, out: Path) -> Path | None:
    """Linear CKA between `model`'s layers (rows) and `other`'s (columns), both in model
    order, one panel per (dataset, pooling); pairs over fewer than three images are left out."""
    panels: dict[tuple[str, str], dict[tuple[str, str], float]] = defaultdict(dict)
    for r in rows:
        if r["n"] is None or r["n"] < MIN_CKA_IMAGES or r["cka"] is None:
            continue
        if r["model_a"] == model and r["model_b"] == other:
            panels[(r["dataset"], r["pooling"])][(r["layer_a"], r["layer_b"])] = r["cka"]
        elif r["model_b"] == model and r["model_a"] == other:
            panels[(r["dataset"], r["pooling"])][(r["layer_b"], r["layer_a"])] = r["cka"]
    if model == other:  # within one model the matrix is symmetric: fill both halves
        for cells in panels.values():
            cells.update({(b, a): value for (a, b), value in list(cells.items())})
    if not panels:
        return None
    keys = sorted(panels)[:6]
    figure, axes = panel_grid(len(keys), columns=2, height=3.6)
    shown = None
    for axis, key in zip(axes, keys, strict=True):
        cells = panels[key]
        mine = ordered_layers([a for a, _ in cells])
        theirs = ordered_layers([b for _, b in cells])
        grid = np.full((len(mine), len(theirs)), np.nan)
        for (a, b), value in cells.items():
            grid[mine.index(a), theirs.index(b)] = value
        shown = axis.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto",
                            interpolation="nearest")  # fmt: skip
        for ticks, labels, names in ((axis.set_yticks, axis.set_yticklabels, mine),
                                     (axis.set_xticks, axis.set_xticklabels, theirs)):  # fmt: skip
            step = max(1, len(names) // 12)
            ticks(range(len(names)))
            labels([short_layer(n) if i % step == 0 else "" for i, n in enumerate(names)])
        for label in axis.get_xticklabels():
            label.set_rotation(35)
            label.set_horizontalalignment("right")
        axis.set_ylabel(model)
        axis.set_xlabel(other)
        axis.set_title(f"{key[0]} / {key[1]}")
        mark_stages(axis, theirs)
    if shown is not None:
        figure.colorbar(shown, ax=axes, label="linear CKA", shrink=0.8)
    figure.suptitle(f"CKA between layers: {model} x {other}")
    return save(figure, out)


@drawn
def behaviour_gap(rows: Sequence[dict[str, Any]], model: str, out: Path) -> Path | None:
    """Per concept: how often the model answers right beside how well its best layer encodes
    the answer (`behaviour_vs_competence`), sorted by the gap between them."""
    found = [r for r in rows if r["answer_accuracy"] is not None and r["probe_accuracy"]]
    if not found:
        return None
    found = sorted(found, key=lambda r: (r["competence_gap"], r["dataset"], r["concept"]))
    found = found[-24:]  # the largest gaps
    height = 0.36 * len(found) + 1.4
    figure, axis = plt.subplots(figsize=(WIDTH, height), layout="constrained")
    y = np.arange(len(found))
    axis.barh(y - 0.2, [r["answer_accuracy"] for r in found], height=0.38, color="C3",
              label="the model's answers")  # fmt: skip
    axis.barh(y + 0.2, [r["probe_accuracy"] for r in found], height=0.38, color="C0",
              label="best layer's probe")  # fmt: skip
    for index, r in enumerate(found):
        axis.text(1.01, index, short_layer(r["peak_layer"]), va="center", fontsize=7,
                  color="dimgrey", transform=axis.get_yaxis_transform())  # fmt: skip
    axis.set_yticks(y)
    axis.set_yticklabels([f"{r['concept']} ({r['dataset']})" for r in found])
    axis.set_xlim(0, 1.0)
    axis.set_xlabel("accuracy (right: the probe's peak layer)")
    axis.grid(axis="x", alpha=0.25)
    figure.legend(loc="outside lower center", ncols=2, frameon=False)
    figure.suptitle(f"{model}: answers against what the layers encode")
    return save(figure, out)
