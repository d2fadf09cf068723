"""PerceptionLM: a thumbnail plus a grid of tiles per image, all on the vision batch axis.

Images of different aspect ratios get different tile counts, and the processor cannot stack
those into one `(batch, tiles, ...)` tensor. The model flattens the first two axes of
`pixel_values` anyway and fills the `<|image|>` tokens in order, so the tiles of the whole batch
go in as one `(1, all tiles, ...)` stack, sample after sample. Each tile becomes the same number
of image tokens, so the generic split by image-token share maps the tower's rows back to the
samples; the timm tower puts a class token in front of each tile's patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    Adapter,
    ModelLayout,
    PatchCells,
    PatchGridError,
    padding_side_of,
)


@dataclass
class PackedTilesAdapter(Adapter):
    """Stacks every image's tiles into one vision batch and splits them back per sample."""

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        texts = [self.prompt_text(processor, prompt) for prompt in prompts]
        # Without return_tensors the processor hands back each image's (tiles, C, H, W) tensor
        # unstacked; the text is padded to one length and converts as usual.
        raw = processor(
            images=list(images), text=texts, padding=True, padding_side=padding_side_of(processor)
        )
        tiles = [torch.as_tensor(t) for t in raw.pop("pixel_values")]
        inputs = BatchFeature(dict(raw), tensor_type="pt")
        inputs["pixel_values"] = torch.cat(tiles).unsqueeze(0)
        return inputs

    def sample_tiles(self, inputs: BatchFeature, layout: ModelLayout) -> list[int]:
        """Tiles per sample: the batch's tiles, split by each sample's share of image tokens."""
        pixels = inputs["pixel_values"]
        rows = pixels.shape[0] * pixels.shape[1]
        return self.tile_counts("pixel_values", rows, inputs, layout, len(inputs["input_ids"]))

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """Only a single-tile image (`vision_input_type` other than thumb+tile) lies on one
        patch grid; the thumbnail and the grid tiles cover the image at different scales."""
        tiles = self.sample_tiles(inputs, layout)[sample]
        if tiles > 1:
            raise PatchGridError(
                f"module {name!r} holds {tiles} tiles for sample {sample} (a thumbnail plus a "
                "grid), which do not lie on one patch grid"
            )
        return super().patch_cells(name, count, inputs, layout, sample)


PACKED_TILES = PackedTilesAdapter(max_images=1, text_only=False)

__all__ = ["PACKED_TILES", "PackedTilesAdapter"]
