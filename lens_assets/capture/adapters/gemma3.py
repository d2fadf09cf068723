"""Gemma3: images go to the processor grouped per prompt, and only soft tokens are image tokens.

What differs from the generic path:

* ``Gemma3Processor`` reads a flat list of images as all belonging to one prompt, so a batch of
  several rows fails its count check; the images go in one list per prompt (an empty list for
  a text-only row beside image rows, no images at all for a batch of text-only rows). Each
  prompt takes any number of images, one ``<start_of_image>`` each from the chat template.
* The processor's ``image_token_id`` is the begin-of-image token its chat template writes; the
  image features sit on ``<image_soft_token>``, ``config.image_token_id``, which is what the
  layout takes (the generic layout reads the model config, never the processor). The begin-
  and end-of-image tokens and the blank lines around them are text, so a row's images are runs
  of soft tokens separated by text: the generic split by runs names each image.
* ``token_type_ids`` (the processor's ``mm_token_type_ids``) reach ``forward`` as they are:
  they let the soft tokens of one image attend to each other bidirectionally.
* The vision tower and projector see one batch row per image, which the generic split maps
  back to each row's images. (Pan-and-scan would add crops, each with soft tokens of its own,
  without saying whose: the processor passes ``do_pan_and_scan=False`` to its image processor
  unless a call asks for it, and this adapter never does.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    VISION_SEGMENTS,
    Adapter,
    padding_side_of,
    per_sample,
)


@dataclass
class Gemma3Adapter(Adapter):
    """The generic path with Gemma3's images grouped per prompt."""

    def prepare(
        self, processor: Any, images: Sequence[Any], prompts: Sequence[str]
    ) -> BatchFeature:
        rows = per_sample(images)
        texts = [self.prompt_text(processor, p, len(r)) for p, r in zip(prompts, rows, strict=True)]
        return processor(
            images=rows if any(rows) else None,
            text=texts,
            padding=True,
            padding_side=padding_side_of(processor),
            return_tensors="pt",
        )


GEMMA3 = Gemma3Adapter(vision_segments=VISION_SEGMENTS)
