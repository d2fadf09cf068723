"""Idefics3 and SmolVLM: sub-images on the vision batch axis, padding images dropped.

The processor cuts each image into a grid of sub-images plus one global image and pads every
sample to the batch's largest count with all-zero images (`pixel_attention_mask` marks them);
the model drops an all-zero image before the vision tower, so the tower and the connector see
only the batch's real sub-images, sample after sample, image after image. Each sub-image becomes
the same number of `<image>` tokens in the LLM; the `<row_i_col_j>`, `<global-img>` and
`<fake_token_around_image>` markers around them are text, so one image is several runs of image
tokens, and two images may sit side by side: an image's runs end with the run after its
`<global-img>` marker (every image has exactly one global image, last).

Both processors take several images per prompt, given as one list per text (SmolVLM's reads a
flat list as all images of one sample), and a text-only row as an empty list (its sample is
all padding images, which the model drops) or, for a batch without images, `images=None`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    ActivationShapeError,
    ModelLayout,
    PatchCells,
    PatchGridError,
    padding_side_of,
    per_sample,
)
from lens_assets.capture.adapters.internvl_aya import TiledImagesAdapter


def images_by_global_run(ids: torch.Tensor, image_id: int, global_id: int) -> list[int]:
    """Image tokens per image where each image's last run of image tokens (its global image)
    follows a `<global-img>` marker."""
    is_image = ids == image_id
    previous = torch.cat([ids.new_full((1,), -1), ids[:-1]])
    run_start = is_image & (previous != image_id)
    run = torch.cumsum(run_start.long(), 0) - 1  # each image token's run
    is_global = (previous == global_id)[run_start].long()  # per run
    image_of_run = torch.cumsum(is_global, 0) - is_global
    return torch.bincount(image_of_run[run[is_image]], minlength=int(is_global.sum())).tolist()


@dataclass
class SubImageAdapter(TiledImagesAdapter):
    """Nested image lists in, and the tower's and connector's sub-image batch mapped back to
    the samples and their images."""

    def prepare(
        self, processor: Any, images: Sequence[Any], prompts: Sequence[str]
    ) -> BatchFeature:
        """One image list per sample (see the module docstring); text pads on the tokenizer's
        current side (right for extraction, left inside generation)."""
        rows = per_sample(images)
        texts = [self.prompt_text(processor, p, len(r)) for p, r in zip(prompts, rows, strict=True)]
        inputs = processor(
            images=rows if any(rows) else None,
            text=texts,
            padding=True,
            padding_side=padding_side_of(processor),
            return_tensors="pt",
        )
        return self.record_image_tokens(processor, inputs)

    def image_tokens(self, processor: Any, ids: torch.Tensor) -> list[int]:
        marker = getattr(processor, "global_image_token", None)  # SmolVLM
        marker = marker or processor.global_image_tag  # Idefics3
        global_id = processor.tokenizer.convert_tokens_to_ids(marker)
        return images_by_global_run(ids, int(processor.image_token_id), int(global_id))

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
        """A sample's positions lie on one raster grid only when it holds one unsplit image:
        the grid sub-images and the global image each cover the whole image at their own scale
        (and a square total would be a coincidence)."""
        sub_images = self.sub_images(inputs)[sample]
        if sub_images > 1:
            raise PatchGridError(
                f"module {name!r} holds {sub_images} sub-images for sample {sample} (a grid "
                "plus the global image, or several images), which do not lie on one patch grid"
            )
        return super().patch_cells(name, count, inputs, layout, sample)


# Several images per prompt (no limit in either processor) and text-only rows.
SUB_IMAGES = SubImageAdapter(max_images=None, text_only=True)

__all__ = ["SUB_IMAGES", "SubImageAdapter", "images_by_global_run"]
