"""Qwen2-VL and its successors pack every image's patches into one (patches, dim) sequence.

The vision tower sees no batch axis: each image contributes t*h*w patches (dynamic
resolution), the merger then folds merge_size**2 of them into one token. `image_grid_thw`
says how many belong to which image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import BatchFeature

from lens_assets.adapters.base import (
    VISION_SEGMENTS,
    ActivationShapeError,
    Adapter,
    ModelLayout,
    Sequences,
)
from lens_assets.pooling import TokenRole


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


QWEN_VL = PackedVisionAdapter(vision_segments=VISION_SEGMENTS)
