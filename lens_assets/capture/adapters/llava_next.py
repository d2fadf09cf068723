"""LLaVA-NeXT and LLaVA-OneVision: anyres tiles on the vision batch axis, unequal per tile.

Each image becomes a base tile (the whole image, downscaled) plus the tiles of the best grid
among the config's `image_grid_pinpoints`, and all tiles of the batch run through the vision
tower (and the projector) as one batch. In the LLM the grid tiles are unpadded and get a
newline token per row, so a tile's share of an image's tokens is not fixed and the generic
split by image-token share does not apply. The tile count per image follows from its
`image_sizes` entry exactly as the model computes it; OneVision leaves an image untiled when its
sample holds several (`batch_num_images`).

Rows of several images go to the processor nested (one list per sample, empty for a text-only
row): OneVision's processor reads `batch_num_images` from that nesting, and LLaVA-NeXT's
flattens it. Images of different sizes become unequal runs of image tokens, which a chat
template may put side by side, so each image's run length is taken from the processor's own
expansion of its placeholder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import BatchFeature
from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

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

    # -- inputs ----------------------------------------------------------------------------
    def prepare(
        self, processor: Any, images: Sequence[Any], prompts: Sequence[str]
    ) -> BatchFeature:
        """Each sample's images as a list of their own (see the module docstring), and each
        image's number of image tokens as the processor expanded its placeholder."""
        rows = per_sample(images)
        texts = [self.prompt_text(processor, p, len(r)) for p, r in zip(prompts, rows, strict=True)]
        return call_counting_image_tokens(
            processor,
            images=rows if any(rows) else None,
            text=texts,
            padding=True,
            padding_side=padding_side_of(processor),
            return_tensors="pt",
        )

    # -- vision outputs --------------------------------------------------------------------
    def images_per_sample(self, inputs: BatchFeature, batch_size: int) -> list[int]:
        """How many images each sample holds: as prepared, else as OneVision's processor
        counted them, else one each."""
        if getattr(inputs, "lens_image_counts", None) is None:
            per_sample_images = inputs.get("batch_num_images")
            if per_sample_images is not None and len(per_sample_images) == batch_size:
                return [int(n) for n in per_sample_images.tolist()]
        return image_counts(inputs, batch_size)

    def image_tiles(self, inputs: BatchFeature, layout: ModelLayout) -> list[int]:
        """Tiles per image, in the order the model lays them on the vision batch axis."""
        sizes = inputs.get("image_sizes")
        if sizes is None or not isinstance(layout, AnyresLayout):
            raise ActivationShapeError(
                "anyres tiles need the processor's `image_sizes` and the config's grid pinpoints"
            )
        per_sample_images = inputs.get("batch_num_images")
        if per_sample_images is None:  # LLaVA-NeXT: every image is tiled
            tiled = [True] * len(sizes)
        else:  # OneVision tiles only the image of a single-image sample
            tiled = [int(n) == 1 for n in per_sample_images.tolist() for _ in range(int(n))]
        return [
            image_size_to_num_patches(size.tolist(), layout.grid_pinpoints, layout.tile_size)
            if tile
            else 1
            for size, tile in zip(sizes, tiled, strict=True)
        ]

    def sample_tiles(self, inputs: BatchFeature, layout: ModelLayout, batch_size: int) -> list[int]:
        """Tiles per sample: the tiles of all its images (none for a text-only row)."""
        tiles = self.image_tiles(inputs, layout)
        images = self.images_per_sample(inputs, batch_size)
        if sum(images) != len(tiles):
            raise ActivationShapeError(
                f"{len(tiles)} images in a batch whose samples hold {images} cannot be assigned "
                "to the samples"
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

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        """A sample's images' tiles end to end, each position marked with its image and its
        tile within that image (tile 0 for an untiled image, alone or batched). The tile counts
        come from `image_sizes`, never from the row count, which may equal the batch size by
        chance."""
        if inputs.get("image_sizes") is None or output.dim() not in (3, 4):
            return super().vision_sequences(name, output, inputs, layout, batch_size)
        if output.dim() == 4:  # convolutional patch embeddings: (tiles, channels, h, w)
            output = output.flatten(2).transpose(1, 2)
            has_cls = False
        else:
            has_cls = any(name == t or name.startswith(t + ".") for t in layout.cls_towers)
        tiles = self.image_tiles(inputs, layout)
        self.tile_counts(name, output.shape[0], inputs, layout, batch_size)  # checks the rows
        joined = join_images(output, self.images_per_sample(inputs, batch_size), tiles, has_cls)
        if joined.tiles is None:  # every image one tile: still a tile column, all 0
            assert joined.image_index is not None
            joined.tiles = torch.where(joined.image_index >= 0, 0, -1)
        return joined

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """Only an untiled image's tower patches lie on one grid: with tiles, the base tile and
        the (cropped, newline-separated) grid tiles each cover the image in their own way, and
        a square total would be a coincidence."""
        batch = len(inputs["input_ids"])
        if self.images_per_sample(inputs, batch)[sample] > 1:
            raise PatchGridError(
                f"sample {sample} holds several images; patch grids are per image, so lay out "
                "a one-image row"
            )
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


def call_counting_image_tokens(processor: Any, **kwargs: Any) -> BatchFeature:
    """`processor(**kwargs)`, with `lens_image_tokens` on the result: per sample, each image's
    number of image tokens as the processor expanded its placeholder (transformers' text
    replacement offsets). Processors that cannot report them leave it unset, and the image
    runs are then split by the generic rule."""
    if hasattr(processor, "get_text_with_replacements"):  # transformers' ProcessorMixin
        kwargs["return_text_replacement_offsets"] = True
    inputs = processor(**kwargs)
    replaced = inputs.pop("text_replacement_offsets", None)
    if replaced is not None:
        token = processor.image_token
        inputs.lens_image_tokens = [
            [item["replacement"].count(token) for item in sample if item["type"] == "image"]
            for sample in replaced
        ]
    return inputs


# Both processors take several images per prompt (one placeholder each) and run without any.
ANYRES = AnyresTileAdapter()

__all__ = ["ANYRES", "AnyresLayout", "AnyresTileAdapter", "call_counting_image_tokens"]
