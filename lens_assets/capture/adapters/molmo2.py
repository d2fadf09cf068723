"""Molmo2: crops on the vision batch axis, pooled image tokens packed without a batch axis.

Every image becomes a low-resolution crop of the whole image and one or more overlapping
high-resolution crops (`image_num_crops` per image, low-res first); the ViT sees all crops of
the batch as its batch axis, so a tower block's crops are joined per image (tile = crop). The
adapter (`multi_modal_projector`) pools patch windows into image tokens and returns every
image's tokens packed as (tokens, dim): per image the low-res grid, then the high-res grid,
their sizes in `image_grids` (low rows, low cols, high rows, high cols). Those are split per
image with tile 0 for the low-res view and 1 for the high-res one. The LLM's image tokens are
the `<im_patch>` positions (`config.image_token_id`); `<im_col>` row ends and the image start
and end markers are text.

The two views and the crop overlaps do not lie on one patch grid, so no position is placed
on the image's pixels (`patch_cells` declines).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    ActivationShapeError,
    Adapter,
    ModelLayout,
    PatchCells,
    PatchGridError,
    Sequences,
    join_tiles,
)
from lens_assets.capture.token_roles import TokenRole


@dataclass
class CropsAndPooledTokensAdapter(Adapter):
    """Joins Molmo2's crops per image and splits its packed image tokens per image."""

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        crops = inputs.get("image_num_crops")
        grids = inputs.get("image_grids")
        if output.dim() == 3 and crops is not None and output.shape[0] == int(crops.sum()):
            return join_tiles(output, self._per_sample(crops.tolist(), batch_size), has_cls=False)
        if output.dim() == 2 and grids is not None:
            views = [(int(a) * int(b), int(c) * int(d)) for a, b, c, d in grids.tolist()]
            if output.shape[0] == sum(low + high for low, high in views):
                return _split_views(output, self._per_sample(views, batch_size))
            raise ActivationShapeError(
                f"module {name!r} produced {output.shape[0]} rows for image grids "
                f"{grids.tolist()}, which hold {sum(low + high for low, high in views)} tokens"
            )
        return super().vision_sequences(name, output, inputs, layout, batch_size)

    @staticmethod
    def _per_sample(values: list, batch_size: int) -> list:
        if len(values) != batch_size:
            raise ActivationShapeError(
                f"{len(values)} images in a batch of {batch_size} samples; one image per sample "
                "is expected"
            )
        return values

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        raise PatchGridError(
            f"module {name!r}: Molmo2 sees an image as a low-res view and overlapping high-res "
            "crops, which do not lie on one patch grid"
        )


def _split_views(packed: torch.Tensor, views: list[tuple[int, int]]) -> Sequences:
    """Per image its low-res then high-res tokens, padded to the longest; tile = view."""
    longest = max(low + high for low, high in views)
    hidden = packed.new_zeros((len(views), longest, packed.shape[-1]))
    roles = torch.full((len(views), longest), TokenRole.PAD, device=packed.device)
    tiles = torch.full((len(views), longest), -1, device=packed.device, dtype=torch.long)
    start = 0
    for sample, (low, high) in enumerate(views):
        hidden[sample, : low + high] = packed[start : start + low + high]
        roles[sample, : low + high] = TokenRole.IMAGE
        tiles[sample, :low] = 0
        tiles[sample, low : low + high] = 1
        start += low + high
    return Sequences(hidden, roles, tiles)


MOLMO2 = CropsAndPooledTokensAdapter(max_images=1, text_only=False)
