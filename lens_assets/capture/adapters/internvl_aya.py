"""InternVL (-hf) and Aya-Vision: dynamic tiles on the vision batch axis (GotOcr2 tiling).

Both cut an image into a grid of tower-sized crops plus a global thumbnail (last), and every
tile gives the same number of image tokens, so the generic `tile_counts` (a sample's share of
the rows is its share of the image tokens) splits the tower and projector rows per image. What
the generic path gets wrong:

* Their processors pad on the left by default (a class-level `padding_side="left"` that the
  tokenizer's own setting does not override), which shifts every real token's position with
  the batch's longest prompt; the base `prepare` passes the tokenizer's side explicitly, so
  extraction pads right (positions as in a batch of one) and generation left.
* Aya-Vision's projector keeps the tile's spatial layout: `(tiles, h, w, dim)`, channel-last,
  which the generic path would read as a convolution's `(batch, channels, h, w)`.
* Several tiles of one image do not lie on one patch grid (the crops cover parts of the image,
  the thumbnail all of it), even when their position count happens to be a square.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    Adapter,
    ModelLayout,
    PatchCells,
    PatchGridError,
    Sequences,
)

# Modules whose 4-D outputs are (tiles, h, w, dim): Aya-Vision's projector and its parts.
CHANNEL_LAST_SEGMENTS = frozenset({"multi_modal_projector"})


@dataclass
class DynamicTileAdapter(Adapter):
    """Channel-last projector outputs and single-tile patch grids (right padding comes from the
    base prepare, which passes the tokenizer's side explicitly)."""

    channel_last_segments: frozenset[str] = field(default=CHANNEL_LAST_SEGMENTS)

    def is_channel_last(self, name: str) -> bool:
        return any(part in self.channel_last_segments for part in name.split("."))

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        if output.dim() == 4 and self.is_channel_last(name):
            output = output.flatten(1, 2)  # (tiles, h, w, dim) -> (tiles, h*w, dim), raster
        return super().vision_sequences(name, output, inputs, layout, batch_size)

    def sample_tiles(self, inputs: BatchFeature, layout: ModelLayout) -> list[int]:
        """Tiles per sample: `pixel_values` holds every tile of the batch, split as the image
        tokens are."""
        pixels = inputs["pixel_values"]
        batch = len(inputs["input_ids"])
        return self.tile_counts("pixel_values", int(pixels.shape[0]), inputs, layout, batch)

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """An image that became one tile (resized whole) lies on that tile's square grid;
        crops plus a thumbnail do not lie on one grid."""
        tiles = self.sample_tiles(inputs, layout)[sample]
        if tiles > 1:
            raise PatchGridError(
                f"module {name!r} holds {tiles} tiles for sample {sample} (crops and a "
                "thumbnail), which do not lie on one patch grid"
            )
        return super().patch_cells(name, count, inputs, layout, sample)


DYNAMIC_TILES = DynamicTileAdapter(max_images=1, text_only=False)

__all__ = ["CHANNEL_LAST_SEGMENTS", "DYNAMIC_TILES", "DynamicTileAdapter"]
