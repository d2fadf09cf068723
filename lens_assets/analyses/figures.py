"""One set of conventions for every picture LensFlow draws, so they read alike in the UI.

- At most `WIDTH` inches wide at `DPI`: the UI's metadata dialog shows it without scrolling.
- Layers run along x in model order (vision tower, projector, language model), with a thin
  line where the stage changes and the stage named once above its span.
- One legend per figure, below the panels, never over the data; titles never overlap a panel
  (constrained layout); nothing is clipped (saved with a tight bounding box).
- The same type sizes everywhere (`STYLE`), legible at the size the UI shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from lens_assets.capture.modules import model_order, short_layer, stage_of

WIDTH = 7.6  # inches (a tight bounding box may add a few pixels)
DPI = 100
PANEL_HEIGHT = 2.7  # inches per row of panels
STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 8,
    "figure.titlesize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
}


@contextmanager
def styled() -> Iterator[None]:
    """Draw inside this block: the house style, restored afterwards."""
    with plt.rc_context(STYLE):
        yield


def panel_grid(count: int, columns: int = 3, height: float = PANEL_HEIGHT) -> tuple[Any, list[Any]]:
    """A figure `WIDTH` wide with `count` panels in rows of at most `columns` (spare axes
    hidden), laid out so that titles and labels never overlap."""
    columns = max(1, min(columns, count))
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(
        rows, columns, figsize=(WIDTH, height * rows + 0.6), squeeze=False, layout="constrained"
    )
    flat = list(axes.flat)
    for axis in flat[count:]:
        axis.axis("off")
    return figure, flat[:count]


def ordered_layers(layers: Sequence[str]) -> list[str]:
    """Distinct layers in model order."""
    return sorted(set(layers), key=model_order)


def layer_axis(
    axis: Any,
    layers: Sequence[str],
    title: str,
    ylabel: str,
    unit_range: bool = True,
    max_names: int = 14,
) -> None:
    """Layers (short names, model order) along x; a share or accuracy from 0 to 1 along y, and
    a thin line where the model's stage changes. At most `max_names` layers are named (the
    rest keep their ticks), so names never run into each other."""
    axis.set_title(title)
    axis.set_xticks(range(len(layers)))
    step = -(-len(layers) // max_names)
    names = [short_layer(layer) if i % step == 0 else "" for i, layer in enumerate(layers)]
    axis.set_xticklabels(names, rotation=35, ha="right")
    if unit_range:
        axis.set_ylim(0, 1.02)
    axis.set_ylabel(ylabel)
    axis.grid(axis="y", alpha=0.25)
    mark_stages(axis, layers)


def mark_stages(axis: Any, layers: Sequence[str], vertical: bool = True) -> None:
    """A thin line between stages (vision | projector | language) and each stage's name."""
    stages = [stage_of(layer) for layer in layers]
    starts = [i for i in range(len(stages)) if i == 0 or stages[i] != stages[i - 1]]
    if len(starts) < 2:
        return
    for start in starts[1:]:
        if vertical:
            axis.axvline(start - 0.5, color="black", linewidth=0.6, alpha=0.35)
        else:
            axis.axhline(start - 0.5, color="white", linewidth=1.0)
    if vertical:  # stages wide enough to carry their name (a projector is named by its tick)
        for begin, end in zip(starts, [*starts[1:], len(stages)], strict=True):
            if end - begin >= 3:
                axis.text(
                    (begin + end - 1) / 2, 0.03, stages[begin],
                    transform=axis.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=7, color="dimgrey",
                )  # fmt: skip


def shared_legend(figure: Any, axes: Sequence[Any], columns: int = 4) -> None:
    """One legend for the whole figure, below the panels (labels gathered from every panel)."""
    seen: dict[str, Any] = {}
    for axis in axes:
        for handle, label in zip(*axis.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    if seen:
        figure.legend(
            list(seen.values()), list(seen), loc="outside lower center",
            ncols=min(columns, len(seen)), frameon=False,
        )  # fmt: skip


def save(figure: Any, out: Path) -> Path:
    """Write the PNG (nothing clipped) and free the figure."""
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=DPI, bbox_inches="tight")
    plt.close(figure)
    return out


def drawn(function: Callable[..., Path | None]) -> Callable[..., Path | None]:
    """Run a picture function in the house style."""

    def wrapper(*args: Any, **kwargs: Any) -> Path | None:
        with styled():
            return function(*args, **kwargs)

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper
