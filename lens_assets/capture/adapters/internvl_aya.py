"""InternVL (-hf) and Aya-Vision: dynamic tiles on the vision batch axis (GotOcr2 tiling).

Both cut an image into a grid of tower-sized crops plus a global thumbnail (last), and every
tile gives the same number of image tokens. Both processors take several images per prompt (a
flat list, consumed placeholder by placeholder across the batch) and text without images, so a
row holds 0..n images. What the generic path gets wrong:

* An image's tile count is not the sample's: a row's tiles are shared among its images by each
  image's own run of image tokens, read off the token ids between the image markers
  (`TiledImagesAdapter`, which Idefics3's and SmolVLM's sub-image adapter shares). Aya's runs
  are one per tile (`TILE_k` text between them), so runs of image tokens are not images either.
* The tile column comes from those counts, never from the vision row count (which can equal the
  batch size by chance): a one-tile image carries tile 0 whatever else is in its batch.
* Their processors pad on the left by default (a class-level `padding_side="left"` that the
  tokenizer's own setting does not override); the base `prepare` passes the tokenizer's side
  explicitly, so extraction pads right (positions as in a batch of one) and generation left.
* Aya-Vision's projector keeps the tile's spatial layout: `(tiles, h, w, dim)`, channel-last,
  which the generic path would read as a convolution's `(batch, channels, h, w)`.
* Several tiles of one image do not lie on one patch grid (the crops cover parts of the image,
  the thumbnail all of it), even when their position count happens to be a square.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
)

# Modules whose 4-D outputs are (tiles, h, w, dim): Aya-Vision's projector and its parts.
CHANNEL_LAST_SEGMENTS = frozenset({"multi_modal_projector"})


@dataclass
class TiledImagesAdapter(Adapter):
    """Families whose images become whole tiles on the vision batch axis, each tile the same
    number of LLM image tokens, with marker tokens inside an image's token span.

    `prepare` records each image's number of image tokens (`lens_image_tokens`, per sample) as
    `image_tokens` reads them off the ids; the LLM's image positions and the vision rows are
    split per image from those counts (an image's share of the tiles is its share of the
    tokens)."""

    def image_tokens(self, processor: Any, ids: torch.Tensor) -> list[int]:
        """How many image tokens each image of one sample's token ids has, in order."""
        raise NotImplementedError

    def record_image_tokens(self, processor: Any, inputs: BatchFeature) -> BatchFeature:
        ids = inputs["input_ids"]
        inputs.lens_image_tokens = [self.image_tokens(processor, sample) for sample in ids]
        return inputs

    def image_tiles(self, rows: int, inputs: BatchFeature, batch_size: int) -> list[int] | None:
        """Tiles per image over the batch (sample by sample), from each image's share of the
        image tokens; None where the inputs do not say (prepared elsewhere)."""
        tokens = getattr(inputs, "lens_image_tokens", None)
        if tokens is None:
            return None
        flat = [count for sample in tokens for count in sample]
        total = sum(flat)
        if sum(image_counts(inputs, batch_size)) != len(flat) or not total:
            raise ActivationShapeError(
                f"the batch's samples hold {image_counts(inputs, batch_size)} images, but their "
                f"image markers give {tokens} image tokens per image"
            )
        if any(rows * count % total for count in flat):
            raise ActivationShapeError(
                f"a vision module produced {rows} rows for images holding {flat} image tokens, "
                "which do not split into whole tiles per image"
            )
        return [rows * count // total for count in flat]

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        """Each sample's images' tiles end to end, every position marked with its image and its
        tile within that image (tile 0 for a one-tile image, alone or batched)."""
        tiles = self.image_tiles(int(output.shape[0]), inputs, batch_size)
        if tiles is None or output.dim() < 2:
            return super().vision_sequences(name, output, inputs, layout, batch_size)
        if output.dim() == 4:  # convolutional patch embeddings: (tiles, channels, h, w)
            output = output.flatten(2).transpose(1, 2)
            has_cls = False
        else:
            has_cls = any(name == t or name.startswith(t + ".") for t in layout.cls_towers)
        joined = join_images(output, image_counts(inputs, batch_size), tiles, has_cls)
        if joined.tiles is None:  # every image one tile: still a tile column, all 0
            assert joined.image_index is not None
            joined.tiles = torch.where(joined.image_index >= 0, 0, -1)
        return joined


def images_by_start_marker(ids: torch.Tensor, image_id: int, start_id: int) -> list[int]:
    """Image tokens per image where every image opens with its own start marker."""
    starts = ids == start_id
    image = torch.cumsum(starts.long(), 0) - 1
    return torch.bincount(image[ids == image_id], minlength=int(starts.sum())).tolist()


@dataclass
class DynamicTileAdapter(TiledImagesAdapter):
    """Image tokens per image between the start-of-image markers (InternVL's `<img>`, Aya's
    `<|START_OF_IMG|>`), channel-last projector outputs and single-tile patch grids."""

    channel_last_segments: frozenset[str] = field(default=CHANNEL_LAST_SEGMENTS)

    def prepare(
        self, processor: Any, images: Sequence[Any], prompts: Sequence[str]
    ) -> BatchFeature:
        """The generic flat image list (both processors hand the images to the placeholders
        in order across the batch), each image's token count recorded."""
        return self.record_image_tokens(processor, super().prepare(processor, images, prompts))

    def image_tokens(self, processor: Any, ids: torch.Tensor) -> list[int]:
        start = getattr(processor, "start_image_token", None)  # InternVL
        start = start or processor.start_of_img_token  # Aya-Vision
        start_id = processor.tokenizer.convert_tokens_to_ids(start)
        return images_by_start_marker(ids, int(processor.image_token_id), int(start_id))

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
        crops plus a thumbnail, or several images, do not lie on one grid."""
        tiles = self.sample_tiles(inputs, layout)[sample]
        if tiles > 1:
            raise PatchGridError(
                f"module {name!r} holds {tiles} tiles for sample {sample} (crops and a "
                "thumbnail, or several images), which do not lie on one patch grid"
            )
        return super().patch_cells(name, count, inputs, layout, sample)


# Several images per prompt (each processor takes a flat list across the batch, no limit of
# its own) and text-only rows (both models run without `pixel_values`).
DYNAMIC_TILES = DynamicTileAdapter(max_images=None, text_only=True)

__all__ = [
    "CHANNEL_LAST_SEGMENTS",
    "DYNAMIC_TILES",
    "DynamicTileAdapter",
    "TiledImagesAdapter",
    "images_by_start_marker",
]
