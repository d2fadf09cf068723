"""PerceptionLM: a thumbnail plus a grid of tiles per image, all on the vision batch axis.

Images of different aspect ratios get different tile counts, and the processor cannot stack
those into one `(batch, tiles, ...)` tensor. The model flattens the first two axes of
`pixel_values` anyway and fills the `<|image|>` tokens in order, so the tiles of the whole batch
go in as one `(1, all tiles, ...)` stack, image after image (a row's images in order, rows in
order). Each tile becomes the same number of image tokens, so an image's tile count gives both
its rows on the vision batch axis and its run of image tokens; the chat template puts a row's
`<|image|>` placeholders side by side, so those runs are adjacent and unequal and are split by
tile count, not by gaps. The timm tower puts a class token in front of each tile's patches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    ActivationShapeError,
    Adapter,
    ModelLayout,
    PatchCells,
    PatchGridError,
    Sequences,
    image_counts,
    join_images,
    padding_side_of,
    per_sample,
)


@dataclass
class PackedTilesAdapter(Adapter):
    """Stacks every image's tiles into one vision batch and splits them back per image."""

    def prepare(
        self, processor: Any, images: Sequence[Any], prompts: Sequence[str]
    ) -> BatchFeature:
        """The processor's per-image tiles stacked into one vision batch; each image's tile
        count is kept on the inputs (`lens_image_tiles`) to split the outputs back."""
        rows = per_sample(images)
        texts = [self.prompt_text(processor, p, len(r)) for p, r in zip(prompts, rows, strict=True)]
        flat = [image for row in rows for image in row]
        # Without return_tensors the processor hands back each image's (tiles, C, H, W) tensor
        # unstacked; the text is padded to one length and converts as usual.
        raw = processor(
            images=flat or None, text=texts, padding=True, padding_side=padding_side_of(processor)
        )
        tiles = [torch.as_tensor(t) for t in raw.pop("pixel_values", [])]
        inputs = BatchFeature(dict(raw), tensor_type="pt")
        if tiles:
            inputs["pixel_values"] = torch.cat(tiles).unsqueeze(0)
        inputs.lens_image_tiles = [len(t) for t in tiles]
        return inputs

    def image_tiles(self, inputs: BatchFeature, layout: ModelLayout) -> list[int]:
        """Tiles per image of the batch, in order: as prepared, else (inputs built elsewhere,
        one image per sample) each sample's share of the tiles by its image tokens."""
        tiles = getattr(inputs, "lens_image_tiles", None)
        if tiles is not None:
            return list(tiles)
        pixels = inputs["pixel_values"]
        rows = pixels.shape[0] * pixels.shape[1]
        return self.tile_counts("pixel_values", rows, inputs, layout, len(inputs["input_ids"]))

    def image_token_sizes(
        self, inputs: BatchFeature, sample: int, positions: torch.Tensor, count: int
    ) -> list[int]:
        """Each image's image tokens: its share of the sample's tokens by tile count (every
        tile gives the same number)."""
        tiles = getattr(inputs, "lens_image_tiles", None)
        if tiles is None:
            return super().image_token_sizes(inputs, sample, positions, count)
        first = sum(image_counts(inputs, len(inputs["input_ids"]))[:sample])
        mine = tiles[first : first + count]
        total = sum(mine)
        if len(mine) != count or total == 0 or len(positions) % total:
            raise ActivationShapeError(
                f"sample {sample} holds {len(positions)} image positions, which do not split "
                f"into whole tiles among its images' {mine} tiles"
            )
        return [n * len(positions) // total for n in mine]

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        """A sample's images' tiles end to end, each position marked with its image and its
        tile within that image."""
        tiles = getattr(inputs, "lens_image_tiles", None)
        if tiles is None or output.dim() != 3:
            return super().vision_sequences(name, output, inputs, layout, batch_size)
        if output.shape[0] != sum(tiles):
            raise ActivationShapeError(
                f"vision module {name!r} produced {output.shape[0]} rows, but the images of "
                f"this batch make {tiles} tiles"
            )
        has_cls = any(name == t or name.startswith(t + ".") for t in layout.cls_towers)
        joined = join_images(output, image_counts(inputs, batch_size), tiles, has_cls)
        if joined.tiles is None:  # every image one tile: still a tile column, all 0
            assert joined.image_index is not None
            joined.tiles = torch.where(joined.image_index >= 0, 0, -1)
        return joined

    def sample_tiles(self, inputs: BatchFeature, layout: ModelLayout) -> list[int]:
        """Tiles per sample: the tiles of all its images (none for a text-only row)."""
        tiles = self.image_tiles(inputs, layout)
        counts, start = [], 0
        for count in image_counts(inputs, len(inputs["input_ids"])):
            counts.append(sum(tiles[start : start + count]))
            start += count
        return counts

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """Only a single-tile image (`vision_input_type` other than thumb+tile) lies on one
        patch grid; the thumbnail and the grid tiles cover the image at different scales."""
        images = image_counts(inputs, len(inputs["input_ids"]))[sample]
        if images != 1:
            raise PatchGridError(
                f"sample {sample} has {images} images; patch grids are per image, so lay out a "
                "one-image row"
            )
        tiles = self.sample_tiles(inputs, layout)[sample]
        if tiles > 1:
            raise PatchGridError(
                f"module {name!r} holds {tiles} tiles for sample {sample} (a thumbnail plus a "
                "grid), which do not lie on one patch grid"
            )
        return super().patch_cells(name, count, inputs, layout, sample)


# The processor takes several `<|image|>` placeholders per prompt, one per image, and runs
# without images (the model then runs text only).
PACKED_TILES = PackedTilesAdapter()

__all__ = ["PACKED_TILES", "PackedTilesAdapter"]
