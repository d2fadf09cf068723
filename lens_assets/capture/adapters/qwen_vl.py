"""Qwen2-VL and its successors pack every image's patches into one (patches, dim) sequence.

The vision tower sees no batch axis: each image contributes t*h*w patches (dynamic
resolution), the merger then folds merge_size**2 of them into one token. `image_grid_thw`
says how many belong to which image: one entry per image of the batch, samples in order.

Rows of several images go through the generic `prepare` (the chat template's
<|vision_start|><|image_pad|><|vision_end|> per image, a flat image list, which the processor
expands image by image); the vision tower attends within each image (cu_seqlens), so a row's
images are each seen on their own. Rows without images run as text only (no pixels, no grid),
alone or beside image rows: M-RoPE positions are computed per sample from its own tokens.
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
    image_counts,
    raster_cells,
)
from lens_assets.capture.token_roles import TokenRole


@dataclass
class PackedVisionAdapter(Adapter):
    """Splits packed vision-tower outputs back per sample (its images end to end) and names
    each image position's image, in the vision tower and in the LLM."""

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        """One sequence per sample: its images' packed rows laid end to end, in order, each
        position marked with its image. `image_grid_thw` has one entry per image of the batch,
        samples in order, so a sample's images are the next `count` entries."""
        grid = inputs.get("image_grid_thw")
        if grid is None or output.dim() != 2:
            return super().vision_sequences(name, output, inputs, layout, batch_size)
        rows = self.image_rows(name, output.shape[0], grid)
        counts = image_counts(inputs, batch_size)
        if sum(counts) != len(rows):
            raise ActivationShapeError(
                f"{len(rows)} images in the packed vision sequence, but the batch's samples hold "
                f"{sum(counts)}"
            )
        per_image = torch.split(output, rows)
        samples, indices, image = [], [], 0
        for count in counts:
            mine = rows[image : image + count]
            samples.append(torch.cat(per_image[image : image + count]) if count else output[:0])
            indices.append(
                torch.arange(count).repeat_interleave(torch.as_tensor(mine, dtype=torch.long))
            )
            image += count
        hidden = pad_sequence(samples, batch_first=True)
        index = pad_sequence(indices, batch_first=True, padding_value=-1).to(output.device)
        roles = torch.where(index >= 0, TokenRole.IMAGE, TokenRole.PAD)
        return Sequences(hidden, roles, image_index=index)

    def image_rows(self, name: str, rows: int, grid: torch.Tensor) -> list[int]:
        """How many of a packed output's `rows` each image of the batch holds: its t*h*w
        patches, or (after a merger) those divided by the merge size squared."""
        patches = grid.prod(dim=1).tolist()
        total = sum(patches)
        if rows == total:
            return patches
        if rows and total % rows == 0 and all(n % (total // rows) == 0 for n in patches):
            merge = total // rows  # the merger folds `merge` patches into one token
            return [n // merge for n in patches]
        raise ActivationShapeError(
            f"vision module {name!r} produced {rows} rows, which matches neither the {total} "
            "packed patches of this batch nor a merge of them"
        )

    def image_token_sizes(
        self, inputs: BatchFeature, sample: int, positions: torch.Tensor, count: int
    ) -> list[int]:
        """Each image's share of the sample's image tokens, from its grid: t*h*w patches over
        the merge size squared (the processor's own count), so no run boundaries are needed."""
        grid = inputs.get("image_grid_thw")
        if grid is None:
            return super().image_token_sizes(inputs, sample, positions, count)
        first = sum(image_counts(inputs, len(inputs["input_ids"]))[:sample])
        patches = grid[first : first + count].prod(dim=1).tolist()
        if len(patches) != count or sum(patches) % len(positions):
            return super().image_token_sizes(inputs, sample, positions, count)
        merge = sum(patches) // len(positions)
        return [n // merge for n in patches]

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """Before the merger, patches come in merge-size blocks (each block's patches in a row,
        blocks in raster order); the merger and the LLM's image tokens hold one token per
        block, in raster order."""
        grid = inputs.get("image_grid_thw")
        if grid is None:
            return super().patch_cells(name, count, inputs, layout, sample)
        counts = image_counts(inputs, len(inputs["input_ids"]))
        if counts[sample] != 1:
            raise PatchGridError(
                f"sample {sample} has {counts[sample]} images; patch grids are per image, so "
                "lay out a one-image row"
            )
        frames, rows, cols = (int(v) for v in grid[sum(counts[:sample])])
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


QWEN_VL = PackedVisionAdapter(vision_segments=VISION_SEGMENTS)
