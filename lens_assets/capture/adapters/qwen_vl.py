"""Qwen2-VL and its successors pack every image's patches into one (patches, dim) sequence.

The vision tower sees no batch axis: each image contributes t*h*w patches (dynamic
resolution), the merger then folds merge_size**2 of them into one token. `image_grid_thw`
says how many belong to which image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    VISION_SEGMENTS,
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
class PackedVisionAdapter(Adapter):
    """Splits packed vision-tower outputs back into one sequence per image."""

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        grid = inputs.get("image_grid_thw")
        if grid is None or output.dim() != 2:
            return super().vision_sequences(name, output, inputs, layout, batch_size)
        patches = grid.prod(dim=1).tolist()
        total = sum(patches)
        if output.shape[0] == total:
            counts = patches
        elif total % output.shape[0] == 0 and all(
            n % (total // output.shape[0]) == 0 for n in patches
        ):
            merge = total // output.shape[0]  # the merger folds `merge` patches into one token
            counts = [n // merge for n in patches]
        else:
            raise ActivationShapeError(
                f"vision module {name!r} produced {output.shape[0]} rows, which matches "
                f"neither the {total} packed patches of this batch nor a merge of them"
            )
        if len(counts) != batch_size:
            raise ActivationShapeError(
                f"{len(counts)} images in a batch of {batch_size} samples; one image per sample "
                "is expected"
            )
        per_image = list(torch.split(output, counts))
        hidden = pad_sequence(per_image, batch_first=True)
        roles = torch.full(hidden.shape[:2], TokenRole.PAD, device=output.device)
        for index, count in enumerate(counts):
            roles[index, :count] = TokenRole.IMAGE
        return Sequences(hidden, roles)

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """Before the merger, patches come in merge-size blocks (each block's patches in a row,
        blocks in raster order); the merger and the LLM's image tokens hold one token per
        block, in raster order."""
        grid = inputs.get("image_grid_thw")
        if grid is None:
            return super().patch_cells(name, count, inputs, layout, sample)
        frames, rows, cols = (int(v) for v in grid[sample])
        if frames != 1:
            raise PatchGridError(f"sample {sample} has {frames} frames; patch grids need images")
        tokens = int((inputs["input_ids"][sample] == layout.image_token_id).sum())
        merge = math.isqrt(rows * cols // tokens) if tokens else 1
        if count == rows * cols // (merge * merge):
            return raster_cells(rows // merge, cols // merge)
        if count != rows * cols:
            raise PatchGridError(
                f"module {name!r} has {count} image positions for a {rows}x{cols} patch grid"
            )
        block, within = np.divmod(np.arange(count), merge * merge)
        block_row, block_col = np.divmod(block, cols // merge)
        row = block_row * merge + within // merge
        col = block_col * merge + within % merge
        return PatchCells(rows, cols, np.stack([row, col], axis=1))


QWEN_VL = PackedVisionAdapter(vision_segments=VISION_SEGMENTS, max_images=1, text_only=False)
