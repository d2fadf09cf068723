"""Qwen2.5-VL: packed patches as in Qwen2-VL, but the vision blocks see them window by window.

Before its first block the tower reorders each image's merge blocks (``merge_size**2`` patches
that the merger folds into one token) so that the blocks of one attention window lie together:
windows in raster order, blocks in raster order inside a window. Every block, the merger and
the tower's own output keep that order; only the merger's result, outside the merger module,
is put back in raster order for the LLM. The reordering never crosses images, so the packed
split per image holds, but inside an image the hooked rows are out of raster order. This
adapter puts them back, so every vision module reads in the order `PackedVisionAdapter`
assumes (merge blocks in raster order, a block's patches together) and matches the order of
the LLM's image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature

from lens_assets.capture.adapters.base import VISION_SEGMENTS, ModelLayout, Sequences
from lens_assets.capture.adapters.qwen_vl import PackedVisionAdapter

# Parts of the tower that run in window order (the tower itself too: its output is the last
# block's); its patch embedding and rotary tables come before the reordering.
WINDOWED_PARTS = frozenset({"blocks", "merger"})


@dataclass
class WindowedLayout(ModelLayout):
    """A packed tower's window geometry, from the vision config."""

    tower: str = "model.visual"
    patch_size: int = 14
    merge_size: int = 2
    window_size: int = 112  # pixels


def window_order(grid_thw: torch.Tensor, merge_size: int, window: int) -> torch.Tensor:
    """The tower's order of the batch's merge blocks: entry j is the raster index of the block
    that sits at row j. `window` is a window's side in merge blocks; edge windows are partial."""
    orders: list[np.ndarray] = []
    offset = 0
    for frames, height, width in grid_thw.tolist():
        rows, cols = height // merge_size, width // merge_size
        frame, row, col = np.unravel_index(np.arange(frames * rows * cols), (frames, rows, cols))
        windows_down, windows_across = -(-rows // window), -(-cols // window)
        which = (frame * windows_down + row // window) * windows_across + col // window
        inside = (row % window) * window + col % window
        orders.append(np.lexsort((inside, which)) + offset)
        offset += frames * rows * cols
    order = np.concatenate(orders) if orders else np.zeros(0, dtype=np.int64)
    return torch.as_tensor(order, dtype=torch.long, device=grid_thw.device)


@dataclass
class WindowedVisionAdapter(PackedVisionAdapter):
    """Restores raster order of windowed vision outputs before the packed split."""

    def layout(self, model: nn.Module) -> ModelLayout:
        base = super().layout(model)
        vision = getattr(getattr(model, "config", None), "vision_config", None)
        if vision is None or getattr(vision, "window_size", None) is None:
            return base
        tower = next(
            (name for name, _ in model.named_modules() if name.split(".")[-1] == "visual"),
            "model.visual",
        )
        return WindowedLayout(
            cls_towers=base.cls_towers,
            image_token_id=base.image_token_id,
            tower=tower,
            patch_size=int(vision.patch_size),
            merge_size=int(vision.spatial_merge_size),
            window_size=int(vision.window_size),
        )

    def is_windowed(self, name: str, layout: ModelLayout) -> bool:
        if not isinstance(layout, WindowedLayout):
            return False
        if name == layout.tower:
            return True
        prefix = layout.tower + "."
        return name.startswith(prefix) and name[len(prefix) :].split(".")[0] in WINDOWED_PARTS

    def raster_rows(
        self, output: torch.Tensor, grid_thw: torch.Tensor, layout: WindowedLayout
    ) -> torch.Tensor:
        """`output`'s rows (patches or merged tokens) back in raster order of merge blocks."""
        window = layout.window_size // layout.merge_size // layout.patch_size
        order = window_order(grid_thw, layout.merge_size, window).to(output.device)
        restore = torch.argsort(order)  # row of each raster block in the window order
        if output.shape[0] == len(order):  # one row per merge block (merger output)
            return output[restore]
        unit = layout.merge_size**2
        if output.shape[0] != len(order) * unit:
            return output  # not a per-patch output; the packed split reports the mismatch
        blocks = output.reshape(len(order), unit, *output.shape[1:])
        return blocks[restore].reshape(output.shape)

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        grid = inputs.get("image_grid_thw")
        if (
            grid is not None
            and output.dim() == 2
            and isinstance(layout, WindowedLayout)
            and self.is_windowed(name, layout)
        ):
            output = self.raster_rows(output, grid, layout)
        return super().vision_sequences(name, output, inputs, layout, batch_size)


QWEN2_5_VL = WindowedVisionAdapter(vision_segments=VISION_SEGMENTS)

__all__ = ["QWEN2_5_VL", "WindowedLayout", "WindowedVisionAdapter", "window_order"]
