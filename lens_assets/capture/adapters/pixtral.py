"""Pixtral towers (LLaVA with a Pixtral tower, Mistral3) pack all images into one sequence.

Each image keeps its aspect ratio, so images differ in patch count; the tower crops every
image's patch grid out of the padded batch (``image_sizes // patch_size``) and concatenates the
grids into a single sequence, batch axis 1 (attention stays within an image). Mistral3's
projector then folds every ``spatial_merge_size``-square of an image's patches into one token,
returning ``(tokens, dim)`` with no batch axis. Both are split back per image from
``image_sizes`` exactly as the model splits them, and a row's images are laid end to end, each
position naming its image.

``PixtralProcessor`` takes any number of images per prompt: a flat list in prompt order, one
``[IMG]`` per image from the chat template, which it expands into the image's grid of ``[IMG]``
tokens with an ``[IMG_BREAK]`` after each row but the last and an ``[IMG_END]`` after it (the
generic prepare). In the LLM, only ``[IMG]`` tokens carry image features; the separators are
text, so an image's tokens are several runs and the split per image comes from its size. A
row without images runs without ``pixel_values``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    ActivationShapeError,
    Adapter,
    ModelLayout,
    PatchCells,
    PatchGridError,
    Sequences,
    image_counts,
    raster_cells,
)
from lens_assets.capture.token_roles import TokenRole


@dataclass
class PixtralLayout(ModelLayout):
    """The generic layout plus the tower's patch size and the projector's merge size (1 when
    the projector keeps every patch, as LLaVA's does)."""

    patch_size: int = 0
    merge_size: int = 1


@dataclass
class PixtralAdapter(Adapter):
    """Splits packed Pixtral-tower and patch-merger outputs back into each row's images."""

    def layout(self, model: nn.Module) -> PixtralLayout:
        generic = super().layout(model)
        config: Any = model.config
        return PixtralLayout(
            cls_towers=generic.cls_towers,
            image_token_id=generic.image_token_id,
            patch_size=int(config.vision_config.patch_size),
            merge_size=int(getattr(config, "spatial_merge_size", 1) or 1),
        )

    def patch_grids(
        self, inputs: BatchFeature, layout: ModelLayout
    ) -> list[tuple[int, int]] | None:
        """(rows, cols) of each image's patch grid, as the tower crops it; None when the inputs
        or the layout cannot say."""
        sizes = inputs.get("image_sizes")
        if sizes is None or not isinstance(layout, PixtralLayout) or layout.patch_size <= 0:
            return None
        return [(int(h) // layout.patch_size, int(w) // layout.patch_size) for h, w in sizes]

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        grids = self.patch_grids(inputs, layout)
        if grids is None:
            return super().vision_sequences(name, output, inputs, layout, batch_size)
        counts = image_counts(inputs, batch_size)
        if len(grids) != sum(counts):
            raise ActivationShapeError(
                f"{len(grids)} image sizes for the {sum(counts)} images of the batch's rows"
            )
        if output.dim() == 4 and output.shape[0] == len(grids):
            # The patch convolution sees the padded batch: keep each image's own grid only.
            per_image = [
                image[:, :rows, :cols].flatten(1).T
                for image, (rows, cols) in zip(output, grids, strict=True)
            ]
            return _per_row(per_image, counts)
        packed = output[0] if output.dim() == 3 and output.shape[0] == 1 else output
        if packed.dim() != 2:
            return super().vision_sequences(name, output, inputs, layout, batch_size)
        merge = layout.merge_size if isinstance(layout, PixtralLayout) else 1
        patches = [rows * cols for rows, cols in grids]
        merged = [(rows // merge) * (cols // merge) for rows, cols in grids]
        if packed.shape[0] == sum(patches):
            sizes = patches
        elif packed.shape[0] == sum(merged):
            sizes = merged
        else:
            raise ActivationShapeError(
                f"vision module {name!r} produced {packed.shape[0]} rows, which matches neither "
                f"the {sum(patches)} packed patches of this batch nor their {merge}x{merge} merge"
            )
        return _per_row(list(torch.split(packed, sizes)), counts)

    def image_token_sizes(
        self, inputs: BatchFeature, sample: int, positions: torch.Tensor, count: int
    ) -> list[int]:
        """``[IMG_BREAK]`` cuts an image's ``[IMG]`` tokens into one run per row, so runs do
        not name images. Every image is resized to whole (patch x merge) cells and has one
        ``[IMG]`` per cell, so its share of the sample's ``[IMG]`` tokens is its share of the
        sample's processed pixel area (``image_sizes``)."""
        sizes = inputs.get("image_sizes")
        if sizes is None or count == 1:
            return super().image_token_sizes(inputs, sample, positions, count)
        first = sum(image_counts(inputs, len(inputs["input_ids"]))[:sample])
        areas = [int(h) * int(w) for h, w in sizes[first : first + count].tolist()]
        total = sum(areas)
        if any(len(positions) * area % total for area in areas):
            raise ActivationShapeError(
                f"{len(positions)} [IMG] positions of sample {sample} do not split among its "
                f"images of {areas} processed pixels"
            )
        return [len(positions) * area // total for area in areas]

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """Patches (and the LLM's ``[IMG]`` tokens made from them) run in raster order over
        the image's own grid, or over the merged grid after a spatial merge; a sample with
        several images has no single grid."""
        grids = self.patch_grids(inputs, layout)
        if grids is None:
            return super().patch_cells(name, count, inputs, layout, sample)
        counts = image_counts(inputs, len(inputs["input_ids"]))
        if counts[sample] != 1:
            raise PatchGridError(
                f"sample {sample} holds {counts[sample]} images, not one image's patch grid"
            )
        rows, cols = grids[sum(counts[:sample])]
        merge = layout.merge_size if isinstance(layout, PixtralLayout) else 1
        if count == rows * cols:
            return raster_cells(rows, cols)
        if count == (rows // merge) * (cols // merge):
            return raster_cells(rows // merge, cols // merge)
        raise PatchGridError(
            f"module {name!r} has {count} image positions for sample {sample}, whose patch grid "
            f"is {rows}x{cols} (merge {merge})"
        )


def _per_row(per_image: list[torch.Tensor], counts: list[int]) -> Sequences:
    """One sequence per row from its images' positions laid end to end, each position marked
    with its image; padded to the longest, pads (and rows without images) marked so no pooling
    sees them."""
    lengths = torch.tensor([len(image) for image in per_image])
    hidden, index, start = [], [], 0
    for count in counts:
        hidden.append(torch.cat([per_image[0][:0], *per_image[start : start + count]]))
        index.append(torch.arange(count).repeat_interleave(lengths[start : start + count]))
        start += count
    padded = pad_sequence(hidden, batch_first=True)
    image_index = pad_sequence(index, batch_first=True, padding_value=-1).to(padded.device)
    roles = torch.where(image_index >= 0, TokenRole.IMAGE, TokenRole.PAD)
    return Sequences(padded, roles, image_index=image_index)


PIXTRAL = PixtralAdapter()
