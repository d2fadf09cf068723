"""The picture of one training run (the `tuned_model` asset): the loss per step with its running
mean, and beside it the held-out accuracy per question kind against chance, in the house
conventions of `figures`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from lens_assets.analyses.figures import drawn, panel_grid, save, shared_legend


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
