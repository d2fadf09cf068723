"""Gemma3: one image per prompt must be said explicitly, and only soft tokens are image tokens.

What differs from the generic path:

* ``Gemma3Processor`` reads a flat list of images as all belonging to one prompt, so a batch of
  several (image, prompt) pairs fails its count check; the images go in one list per prompt.
* The processor's ``image_token_id`` is the begin-of-image token its chat template writes; the
  image features sit on ``<image_soft_token>``, ``config.image_token_id``, which is what the
  layout takes (the generic layout reads the model config, never the processor). The begin-
  and end-of-image tokens and the blank lines around them are text.
* ``token_type_ids`` (the processor's ``mm_token_type_ids``) reach ``forward`` as they are:
  they let the soft tokens of one image attend to each other bidirectionally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from transformers import BatchFeature

from lens_assets.capture.adapters.base import VISION_SEGMENTS, Adapter


@dataclass
class Gemma3Adapter(Adapter):
    """The generic path with Gemma3's images grouped per prompt."""

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        texts = [self.prompt_text(processor, prompt) for prompt in prompts]
        per_prompt = [[image] for image in images]
        return processor(images=per_prompt, text=texts, padding=True, return_tensors="pt")


GEMMA3 = Gemma3Adapter(vision_segments=VISION_SEGMENTS, max_images=1, text_only=False)
