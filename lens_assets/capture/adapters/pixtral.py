"""Pixtral towers (LLaVA with a Pixtral tower, Mistral3) pack all images into one sequence.

Each image keeps its aspect ratio, so images differ in patch count; the tower crops every
image's patch grid out of the padded batch (``image_sizes // patch_size``) and concatenates the
grids into a single sequence, batch axis 1. Mistral3's projector then folds every
``spatial_merge_size``-square of an image's patches into one token, returning
``(tokens, dim)`` with no batch axis. Both are split back per image from ``image_sizes``
exactly as the model splits them. In the LLM, only ``[IMG]`` tokens carry image features;
the ``[IMG_BREAK]`` and ``[IMG_END]`` separators are text.
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
    """Splits packed Pixtral-tower and patch-merger outputs back into one sequence per image."""

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
        if len(grids) != batch_size:
            raise ActivationShapeError(
                f"{len(grids)} images in a batch of {batch_size} samples; one image per sample "
                "is expected"
            )
        if output.dim() == 4 and output.shape[0] == batch_size:
            # The patch convolution sees the padded batch: keep each image's own grid only.
            per_image = [
                image[:, :rows, :cols].flatten(1).T
                for image, (rows, cols) in zip(output, grids, strict=True)
            ]
            return _padded(per_image)
        packed = output[0] if output.dim() == 3 and output.shape[0] == 1 else output
        if packed.dim() != 2:
            return super().vision_sequences(name, output, inputs, layout, batch_size)
        merge = layout.merge_size if isinstance(layout, PixtralLayout) else 1
        patches = [rows * cols for rows, cols in grids]
        merged = [(rows // merge) * (cols // merge) for rows, cols in grids]
        if packed.shape[0] == sum(patches):
            counts = patches
        elif packed.shape[0] == sum(merged):
            counts = merged
        else:
            raise ActivationShapeError(
                f"vision module {name!r} produced {packed.shape[0]} rows, which matches neither "
                f"the {sum(patches)} packed patches of this batch nor their {merge}x{merge} merge"
            )
        return _padded(list(torch.split(packed, counts)))

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """Patches (and the LLM's ``[IMG]`` tokens made from them) run in raster order over
        the image's own grid, or over the merged grid after a spatial merge."""
        grids = self.patch_grids(inputs, layout)
        if grids is None:
            return super().patch_cells(name, count, inputs, layout, sample)
        rows, cols = grids[sample]
        merge = layout.merge_size if isinstance(layout, PixtralLayout) else 1
        if count == rows * cols:
            return raster_cells(rows, cols)
        if count == (rows // merge) * (cols // merge):
            return raster_cells(rows // merge, cols // merge)
        raise PatchGridError(
            f"module {name!r} has {count} image positions for sample {sample}, whose patch grid "
            f"is {rows}x{cols} (merge {merge})"
        )


def _padded(per_image: list[torch.Tensor]) -> Sequences:
    """One row per image, padded to the longest; pads marked so no pooling sees them."""
    hidden = pad_sequence(per_image, batch_first=True)
    roles = torch.full(hidden.shape[:2], TokenRole.PAD, device=hidden.device)
    for index, image in enumerate(per_image):
        roles[index, : image.shape[0]] = TokenRole.IMAGE
    return Sequences(hidden, roles)


PIXTRAL = PixtralAdapter(max_images=1, text_only=False)
