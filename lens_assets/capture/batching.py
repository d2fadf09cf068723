"""How many rows a batch holds and which rows a model can take: the batch size a memory budget
affords (halved on a CUDA out-of-memory error), and the rows a one-image family leaves out."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lens_assets.capture.loading import LoadedModel
from lens_assets.data.rows import RowInput

log = logging.getLogger(__name__)


def fitting_rows(
    loaded: LoadedModel, rows: Sequence[RowInput | str | Path]
) -> tuple[list[RowInput | str | Path], str | None]:
    """The rows this model can be given as they are, and why the others were left out (a
    family that takes one image per prompt, given a two-image question, says so here rather
    than answer a different question about one of the pictures)."""
    adapter = loaded.architecture.adapter
    fit = [
        row for row in rows
        if isinstance(row, str | Path)
        or ((adapter.max_images is None or len(row.paths) <= adapter.max_images)
            and (adapter.text_only or row.paths))
    ]  # fmt: skip
    if len(fit) == len(rows):
        return fit, None
    limit = "any number of" if adapter.max_images is None else f"at most {adapter.max_images}"
    needs = "" if adapter.text_only else ", and at least one,"
    return fit, (
        f"{len(rows) - len(fit)} of {len(rows)} rows left out: {loaded.architecture.name} takes "
        f"{limit}{needs} image(s) per prompt"
    )


@dataclass
class BatchSizer:
    """The batch size a run can afford.

    With a memory budget, the first batch is a single image: the bytes its hooks hold give a
    per-image estimate, and later batches are as large as the budget allows (never above the
    requested size). A CUDA out-of-memory error halves the size and the batch is run again.
    """

    requested: int
    budget_bytes: int | None = None
    oom_retries: int = 0
    size: int = field(init=False)
    estimated: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self.size = 1 if self.budget_bytes else self.requested

    def learn(self, bytes_per_image: float) -> None:
        if not self.budget_bytes or self.estimated or bytes_per_image <= 0:
            return
        self.estimated = True
        affordable = max(1, int(self.budget_bytes // bytes_per_image))
        self.size = min(self.requested, affordable)
        if affordable < self.requested:
            log.info(
                "batch size %d -> %d: the hooks hold %.1f MiB per image, the budget is %.1f MiB",
                self.requested, self.size, bytes_per_image / 2**20, self.budget_bytes / 2**20,
            )  # fmt: skip

    def out_of_memory(self, error: BaseException) -> None:
        if self.size == 1:
            raise error
        self.size //= 2
        self.oom_retries += 1
        log.warning("out of device memory; retrying the batch at size %d", self.size)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
