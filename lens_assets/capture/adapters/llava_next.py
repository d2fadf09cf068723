"""LLaVA-NeXT and LLaVA-OneVision: anyres tiles on the vision batch axis, unequal per tile.

Each image becomes a base tile (the whole image, downscaled) plus the tiles of the best grid
among the config's `image_grid_pinpoints`, and all tiles of the batch run through the vision
tower (and the projector) as one batch. In the LLM the grid tiles are unpadded and get a
newline token per row, so a tile's share of an image's tokens is not fixed and the generic
split by image-token share does not apply. The tile count per image follows from its
`image_sizes` entry exactly as the model computes it; OneVision leaves an image untiled when its
sample holds several (`batch_num_images`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn
from transformers import BatchFeature
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

from lens_assets.capture.adapters.base import (
    ActivationShapeError,
    Adapter,
    ModelLayout,
    PatchCells,
    PatchGridError,
    raster_cells,
)


@dataclass
class AnyresLayout(ModelLayout):
    """The generic layout plus what decides an image's tiles: the grid pinpoints (height,
    width in pixels) and the vision tower's input side."""

    grid_pinpoints: list[list[int]] = field(default_factory=list)
    tile_size: int = 0
    patch_size: int = 0


@dataclass
class AnyresTileAdapter(Adapter):
    """Splits the vision tower's and projector's tile batch back into images."""

    def layout(self, model: nn.Module) -> AnyresLayout:
        generic = super().layout(model)
        config: Any = model.config
        vision = config.vision_config
        return AnyresLayout(
            cls_towers=generic.cls_towers,
            image_token_id=generic.image_token_id,
            grid_pinpoints=[list(point) for point in config.image_grid_pinpoints],
            tile_size=int(vision.image_size),
            patch_size=int(vision.patch_size),
        )

    def image_tiles(self, inputs: BatchFeature, layout: ModelLayout) -> list[int]:
        """Tiles per image, in the order the model lays them on the vision batch axis."""
        sizes = inputs.get("image_sizes")
        if sizes is None or not isinstance(layout, AnyresLayout):
            raise ActivationShapeError(
                "anyres tiles need the processor's `image_sizes` and the config's grid pinpoints"
            )
        per_sample = inputs.get("batch_num_images")
        if per_sample is None:  # LLaVA-NeXT: every image is tiled
            tiled = [True] * len(sizes)
        else:  # OneVision tiles only the image of a single-image sample
            tiled = [int(n) == 1 for n in per_sample.tolist() for _ in range(int(n))]
        return [
            image_size_to_num_patches(size.tolist(), layout.grid_pinpoints, layout.tile_size)
            if tile
            else 1
            for size, tile in zip(sizes, tiled, strict=True)
        ]

    def sample_tiles(self, inputs: BatchFeature, layout: ModelLayout, batch_size: int) -> list[int]:
        """Tiles per sample: the tiles of all its images."""
        tiles = self.image_tiles(inputs, layout)
        per_sample = inputs.get("batch_num_images")
        images = [1] * len(tiles) if per_sample is None else [int(n) for n in per_sample.tolist()]
        if len(images) != batch_size or sum(images) != len(tiles):
            raise ActivationShapeError(
                f"{len(tiles)} images in a batch of {batch_size} samples cannot be assigned to "
                "the samples"
            )
        counts, start = [], 0
        for count in images:
            counts.append(sum(tiles[start : start + count]))
            start += count
        return counts

    def tile_counts(
        self, name: str, rows: int, inputs: BatchFeature, layout: ModelLayout, batch_size: int
    ) -> list[int]:
        counts = self.sample_tiles(inputs, layout, batch_size)
        if sum(counts) != rows:
            raise ActivationShapeError(
                f"vision module {name!r} produced {rows} rows, but the images of this batch "
                f"make {counts} anyres tiles"
            )
        return counts

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """Only an untiled image's tower patches lie on one grid: with tiles, the base tile and
        the (cropped, newline-separated) grid tiles each cover the image in their own way, and
        a square total would be a coincidence."""
        batch = len(inputs["input_ids"])
        if self.sample_tiles(inputs, layout, batch)[sample] > 1:
            raise PatchGridError(
                f"module {name!r} holds anyres tiles for sample {sample} (a base tile plus a "
                "grid), which do not lie on one patch grid"
            )
        side = layout.tile_size // layout.patch_size if isinstance(layout, AnyresLayout) else 0
        if count != side * side or side == 0 or not self.is_vision(name):
            raise PatchGridError(
                f"module {name!r} has {count} image positions for sample {sample}, not the "
                f"{side}x{side} patches of one tile"
            )
        return raster_cells(side, side)


ANYRES = AnyresTileAdapter(max_images=1, text_only=False)

__all__ = ["ANYRES", "AnyresLayout", "AnyresTileAdapter"]
