"""SigLIP: a dual encoder whose text tower pools its last position, not its EOS token.

SigLIP was trained on texts padded to a fixed length (64 tokens), and its pooled text vector
(`text_model.head`) is read at the last position. Padding to the longest prompt of a batch
would make that position a real token for one sample and a pad for another, so the pooled
vector would depend on the batch; every text is padded to the tokenizer's fixed length instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from transformers import BatchFeature

from lens_assets.capture.adapters.dual_encoder import DualEncoderAdapter

# Above this, `model_max_length` is the tokenizer's "no limit" placeholder, not SigLIP's length.
LONGEST_FIXED_LENGTH = 4096


@dataclass
class SiglipAdapter(DualEncoderAdapter):
    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        length = getattr(getattr(processor, "tokenizer", None), "model_max_length", None)
        if not any(prompts) or not length or length > LONGEST_FIXED_LENGTH:
            return super().prepare(processor, images, prompts)
        return processor(
            images=list(images),
            text=list(prompts),
            padding="max_length",
            truncation=True,
            max_length=length,
            return_tensors="pt",
        )


SIGLIP = SiglipAdapter(max_images=1, text_only=False)
