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

The processor takes several images per prompt (a flat list, one `<|image|>` placeholder each);
a row's images keep their order on every axis, so a sample's images are the next entries of
`image_num_crops` and `image_grids`. Each image's `<im_patch>` tokens come in many runs (the
`<im_col>` row ends break them), so the runs are assigned to images by `image_grids`.

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
    image_counts,
    join_images,
)
from lens_assets.capture.token_roles import TokenRole


@dataclass
class CropsAndPooledTokensAdapter(Adapter):
    """Joins Molmo2's crops per image and splits its packed image tokens per image."""

    def image_token_sizes(
        self, inputs: BatchFeature, sample: int, positions: torch.Tensor, count: int
    ) -> list[int]:
        """Each image's `<im_patch>` tokens: its low-res plus its high-res grid."""
        grids = inputs.get("image_grids")
        if grids is None:
            return super().image_token_sizes(inputs, sample, positions, count)
        first = sum(image_counts(inputs, len(inputs["input_ids"]))[:sample])
        sizes = [a * b + c * d for a, b, c, d in grids[first : first + count].tolist()]
        if len(sizes) != count or sum(sizes) != len(positions):
            raise ActivationShapeError(
                f"sample {sample} has {len(positions)} image tokens, but its image grids hold "
                f"{sizes}"
            )
        return sizes

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
        counts = image_counts(inputs, batch_size)
        if output.dim() == 3 and crops is not None and output.shape[0] == int(crops.sum()):
            joined = join_images(output, counts, crops.tolist(), has_cls=False)
            if joined.tiles is None:  # every image one crop: still a tile column, all 0
                assert joined.image_index is not None
                joined.tiles = torch.where(joined.image_index >= 0, 0, -1)
            return joined
        if output.dim() == 2 and grids is not None:
            views = [(int(a) * int(b), int(c) * int(d)) for a, b, c, d in grids.tolist()]
            if output.shape[0] == sum(low + high for low, high in views):
                return _split_views(output, views, counts)
            raise ActivationShapeError(
                f"module {name!r} produced {output.shape[0]} rows for image grids "
                f"{grids.tolist()}, which hold {sum(low + high for low, high in views)} tokens"
            )
        return super().vision_sequences(name, output, inputs, layout, batch_size)

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        raise PatchGridError(
            f"module {name!r}: Molmo2 sees an image as a low-res view and overlapping high-res "
            "crops, which do not lie on one patch grid"
        )


def _split_views(
    packed: torch.Tensor, views: list[tuple[int, int]], counts: list[int]
) -> Sequences:
    """Per sample its images' low-res then high-res tokens, image after image, padded to the
    longest; tile = view (0 low-res, 1 high-res), image_index = the row's image."""
    if sum(counts) != len(views):
        raise ActivationShapeError(
            f"{len(views)} image grids in a batch whose samples hold {counts} images"
        )
    lengths, start = [], 0
    for count in counts:
        lengths.append(sum(low + high for low, high in views[start : start + count]))
        start += count
    longest = max(lengths, default=0)
    hidden = packed.new_zeros((len(counts), longest, packed.shape[-1]))
    roles = torch.full((len(counts), longest), TokenRole.PAD, device=packed.device)
    tiles = torch.full((len(counts), longest), -1, device=packed.device, dtype=torch.long)
    index = torch.full_like(tiles, -1)
    row, image = 0, 0
    for sample, count in enumerate(counts):
        position = 0
        for k in range(count):
            low, high = views[image]
            end = position + low + high
            hidden[sample, position:end] = packed[row : row + low + high]
            roles[sample, position:end] = TokenRole.IMAGE
            tiles[sample, position : position + low] = 0
            tiles[sample, position + low : end] = 1
            index[sample, position:end] = k
            row, image, position = row + low + high, image + 1, end
    return Sequences(hidden, roles, tiles, index)


# The processor takes several images per prompt and runs without any (text only).
MOLMO2 = CropsAndPooledTokensAdapter()
