"""Idefics3 and SmolVLM: sub-images on the vision batch axis, padding images dropped.

The processor cuts each image into a grid of sub-images plus one global image and pads every
sample to the batch's largest count with all-zero images (`pixel_attention_mask` marks them);
the model drops an all-zero image before the vision tower, so the tower and the connector see
only the batch's real sub-images, sample after sample. Each sub-image becomes the same number
of `<image>` tokens in the LLM; the `<row_i_col_j>`, `<global-img>` and
`<fake_token_around_image>` markers around them are text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    ActivationShapeError,
    Adapter,
    ModelLayout,
    PatchCells,
    PatchGridError,
    padding_side_of,
)


@dataclass
class SubImageAdapter(Adapter):
    """Maps the tower's and connector's sub-image batch back to the samples."""

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        """One image list per sample: SmolVLM's processor reads a flat list as all images of
        one sample (Idefics3's splits it by prompt), so nest it for both. Text pads on the
        tokenizer's current side (right for extraction, left inside generation)."""
        texts = [self.prompt_text(processor, prompt) for prompt in prompts]
        nested = [[image] for image in images]
        return processor(
            images=nested,
            text=texts,
            padding=True,
            padding_side=padding_side_of(processor),
            return_tensors="pt",
        )

    def sub_images(self, inputs: BatchFeature) -> list[int]:
        """Real sub-images per sample, by the model's own rule: an all-zero image is padding."""
        pixels = inputs.get("pixel_values")
        if pixels is None or pixels.dim() != 5:
            raise ActivationShapeError(
                "sub-images need the processor's (batch, images, channels, height, width) "
                "`pixel_values`"
            )
        return pixels.flatten(2).ne(0).any(dim=2).sum(dim=1).tolist()

    def tile_counts(
        self, name: str, rows: int, inputs: BatchFeature, layout: ModelLayout, batch_size: int
    ) -> list[int]:
        counts = self.sub_images(inputs)
        if len(counts) != batch_size or sum(counts) != rows:
            raise ActivationShapeError(
                f"vision module {name!r} produced {rows} rows, but the {batch_size} samples of "
                f"this batch hold {counts} real sub-images"
            )
        return counts

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """A sample's positions lie on one raster grid only when its image was not split: the
        grid sub-images and the global image each cover the whole image at their own scale
        (and a square total would be a coincidence)."""
        sub_images = self.sub_images(inputs)[sample]
        if sub_images > 1:
            raise PatchGridError(
                f"module {name!r} holds {sub_images} sub-images for sample {sample} (a grid "
                "plus the global image), which do not lie on one patch grid"
            )
        return super().patch_cells(name, count, inputs, layout, sample)


SUB_IMAGES = SubImageAdapter(max_images=1, text_only=False)

__all__ = ["SUB_IMAGES", "SubImageAdapter"]
