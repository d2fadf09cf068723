"""The pictures of tuning, in the house conventions of `figures`: one training run (the
`tuned_model` asset: the loss per step with its running mean, and beside it the held-out
accuracy per question kind against chance), and a tuned model beside its base on the same
held-out rows (the `tuning_effects` asset: one pair of bars per measure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lens_assets.analyses.figures import WIDTH, drawn, panel_grid, plt, save, shared_legend


def running_mean(values: Sequence[float], window: int) -> list[float]:
    """The mean of each value and the `window - 1` before it (fewer at the start): a noisy
    per-batch loss shows its trend."""
    out: list[float] = []
    total = 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        out.append(total / min(index + 1, window))
    return out


@drawn
def loss_curve(
    losses: Sequence[float],
    model: str,
    out: Path,
    held_out: Mapping[str, tuple[float, float]] | None = None,
) -> Path | None:
    """The loss per optimiser step (and its running mean over a tenth of the run), and, when
    `held_out` maps question kinds to (accuracy, chance), those as bars beside it. None when
    there is no step to draw."""
    if not losses:
        return None
    figure, axes = panel_grid(2 if held_out else 1, columns=2)
    axis = axes[0]
    steps = list(range(1, len(losses) + 1))
    window = max(1, len(losses) // 10)
    axis.plot(steps, losses, color="lightsteelblue", linewidth=0.8, label="loss per step")
    if window > 1:
        axis.plot(steps, running_mean(losses, window), color="navy", linewidth=1.4,
                  label=f"running mean ({window} steps)")  # fmt: skip
    axis.set_xlabel("step")
    axis.set_ylabel("loss on the answer tokens")
    axis.set_title(f"{model}: training loss")
    axis.set_ylim(bottom=0)
    if held_out:
        kinds = sorted(held_out)
        bars = axes[1]
        positions = range(len(kinds))
        bars.bar(positions, [held_out[k][0] for k in kinds], color="seagreen",
                 label="held-out accuracy")  # fmt: skip
        bars.scatter(positions, [held_out[k][1] for k in kinds], marker="_", s=400,
                     color="black", zorder=3, label="chance")  # fmt: skip
        bars.set_xticks(list(positions), kinds)
        bars.set_ylim(0, 1)
        bars.set_ylabel("accuracy")
        bars.set_title(f"{model}: held-out answers by kind")
    shared_legend(figure, axes)
    return save(figure, out)


# (label, column): each measure of `tuning_effects`, the variant's column and the base's is
# `base_<column>`; every one lies in [0, 1].
EFFECT_MEASURES = (
    ("VLM accuracy", "accuracy"),
    ("readout: vision", "vision_readout"),
    ("readout: projector", "projector_readout"),
    ("readout: language", "language_readout"),
    ("TV(answers, labels)", "tv_labels"),
    ("image share of attention", "image_share"),
)


@drawn
def effects_chart(row: Mapping[str, object], out: Path) -> Path | None:
    """One row of `tuning_effects` as paired bars per measure: the tuned model beside its base
    on the same held-out rows, chance marked on the accuracy; a measure the warehouse has no
    value for says so instead of a bar. None when the row holds no measure at all."""
    values = [
        (label, _number(row.get(column)), _number(row.get(f"base_{column}")))
        for label, column in EFFECT_MEASURES
    ]
    if all(mine is None and base is None for _, mine, base in values):
        return None
    figure, axis = plt.subplots(figsize=(WIDTH, 0.42 * len(values) + 1.5), layout="constrained")
    y = np.arange(len(values))
    for offset, index, colour, label in ((-0.2, 1, "C0", str(row["model"])),
                                         (0.2, 2, "silver", f"base: {row['base']}")):  # fmt: skip
        axis.barh(y + offset, [v[index] or 0.0 for v in values], height=0.38, color=colour,
                  label=label)  # fmt: skip
    for position, (_, mine, base) in enumerate(values):
        for offset, value in ((-0.2, mine), (0.2, base)):
            shown = "n/a" if value is None else f"{value:.2f}"
            axis.text((value or 0.0) + 0.01, position + offset, shown, va="center", fontsize=7,
                      color="dimgrey")  # fmt: skip
    chance = _number(row.get("chance"))
    if chance is not None:
        axis.plot([chance, chance], [-0.45, 0.45], color="black", linewidth=1.2,
                  label="chance (accuracy)")  # fmt: skip
    axis.set_yticks(y)
    axis.set_yticklabels([label for label, _, _ in values])
    axis.invert_yaxis()
    axis.set_xlim(0, 1.08)
    axis.set_xlabel(f"on the same {row.get('n')} held-out rows of {row.get('dataset')}")
    axis.grid(axis="x", alpha=0.25)
    axis.set_title(f"{row['model']} ({row.get('method')}) beside its base {row['base']}")
    shared_legend(figure, [axis], columns=3)
    return save(figure, out)


def _number(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
