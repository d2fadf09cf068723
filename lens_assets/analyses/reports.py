"""Pictures for the UI and `warehouse/reports/`: plain matplotlib, no display needed."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lens_assets.capture.modules import model_order, short_layer


def probe_curves(rows: Sequence[dict[str, Any]], model: str, out: Path) -> Path | None:
    """Probe and control accuracy by layer, one line per concept (dashed: control), one panel
    per (dataset, pooling, probe kind)."""
    panels: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        panels[(row["dataset"], row["pooling"], row["probe"])].append(row)
    if not panels:
        return None
    columns = min(3, len(panels))
    lines = (len(panels) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(5.2 * columns, 3.6 * lines), squeeze=False)
    for axis, ((dataset, pooling, kind), members) in zip(
        axes.flat, sorted(panels.items()), strict=False
    ):
        layers = sorted({r["layer"] for r in members}, key=model_order)
        position = {layer: i for i, layer in enumerate(layers)}
        by_concept: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in members:
            by_concept[r["concept"]].append(r)
        for index, (concept, points) in enumerate(sorted(by_concept.items())):
            points.sort(key=lambda r: position[r["layer"]])
            x = [position[r["layer"]] for r in points]
            colour = f"C{index % 10}"
            axis.plot(x, [r["accuracy"] for r in points], "-o", color=colour, label=concept)
            axis.plot(x, [r["control_accuracy"] for r in points], "--", color=colour, alpha=0.6)
        _layer_axis(axis, layers, f"{dataset} / {pooling} / {kind}", "accuracy (dashed: control)")
        axis.legend(fontsize=7, loc="lower right")
    for axis in list(axes.flat)[len(panels) :]:
        axis.axis("off")
    figure.suptitle(f"{model}: probe accuracy by layer", fontsize=11)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out


def _layer_axis(axis: Any, layers: Sequence[str], title: str, ylabel: str) -> None:
    """Layers along x (short names), a share or accuracy from 0 to 1 along y."""
    axis.set_title(title, fontsize=9)
    axis.set_xticks(range(len(layers)))
    names = [short_layer(layer) for layer in layers]
    axis.set_xticklabels(names, rotation=30, ha="right", fontsize=7)
    axis.set_ylim(0, 1.02)
    axis.set_ylabel(ylabel, fontsize=8)


def dominance_by_layer(rows: Sequence[dict[str, Any]], model: str, out: Path) -> Path | None:
    """Share of disagreeing Stroop items following each cue, by layer, one panel per
    (dataset, pooling)."""
    panels: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["share"] is not None:
            panels[(row["dataset"], row["pooling"])].append(row)
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.6), squeeze=False)
    for axis, ((dataset, pooling), members) in zip(axes.flat, sorted(panels.items()), strict=True):
        layers = sorted({r["layer"] for r in members}, key=model_order)
        for cue in ("word", "font", "background", "none"):
            points = {r["layer"]: r["share"] for r in members if r["cue"] == cue}
            axis.plot(range(len(layers)), [points.get(layer, 0.0) for layer in layers], "-o",
                      label=cue)  # fmt: skip
        _layer_axis(axis, layers, f"{dataset} / {pooling}", "share of conflicting items")
        axis.legend(fontsize=7)
    figure.suptitle(f"{model}: which cue the representation follows", fontsize=11)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out


def vision_vs_vlm_by_layer(rows: Sequence[dict[str, Any]], model: str, out: Path) -> Path | None:
    """Accuracy from each layer's features (vision, projector, LLM along x), with the model's
    own answers and chance as horizontal lines; one panel per dataset."""
    panels: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        panels[(row["dataset"], row["task"])].append(row)
    if not panels:
        return None
    figure, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 3.8), squeeze=False)
    for axis, ((dataset, task), members) in zip(axes.flat, sorted(panels.items()), strict=True):
        members = sorted(members, key=lambda r: r["layer_order"])
        x = range(len(members))
        axis.plot(x, [r["feature_accuracy"] for r in members], "-o", label="from features")
        axis.axhline(members[0]["chance"], color="grey", linestyle=":", label="chance")
        vlm = members[0]["vlm_accuracy"]
        if vlm is not None:
            axis.axhline(vlm, color="C3", linestyle="--", label="VLM answer")
        for index in range(1, len(members)):
            if members[index]["stage"] != members[index - 1]["stage"]:
                axis.axvline(index - 0.5, color="black", linewidth=0.6, alpha=0.4)
        _layer_axis(axis, [r["layer"] for r in members], f"{dataset} ({task})", "accuracy")
        axis.legend(fontsize=7)
    figure.suptitle(f"{model}: the task solved from each layer's patch features", fontsize=11)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out


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
    logit lens's label probability, patching's recovery. Layers in depth order."""
    points: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row[value] is not None and row[value] == row[value]:  # NaN: no contrast to recover
            points[str(row[series])][row["layer"]].append(float(row[value]))
    if not points:
        return None
    layers = sorted({layer for by_layer in points.values() for layer in by_layer}, key=model_order)
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    for index, (name, by_layer) in enumerate(sorted(points.items())):
        x = [i for i, layer in enumerate(layers) if layer in by_layer]
        y = [sum(by_layer[layers[i]]) / len(by_layer[layers[i]]) for i in x]
        axis.plot(x, y, "-o", color=f"C{index % 10}", label=name)
    _layer_axis(axis, layers, title, ylabel)
    if not unit_range:
        axis.autoscale(axis="y")
    axis.legend(fontsize=7)
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=90)
    plt.close(figure)
    return out
