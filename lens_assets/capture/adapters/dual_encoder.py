"""Dual encoders (CLIP, SigLIP): separate image and text towers, no generation, no template.

The text tower reads the prompt on its own, so its sequences hold `text` and `pad` only; with
no prompt, only the image tower runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from torch import nn
from transformers import BatchFeature

from lens_assets.capture.adapters.base import Adapter


@dataclass
class DualEncoderAdapter(Adapter):
    model_class: str = "AutoModel"

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        if not any(prompts):
            return processor(images=list(images), return_tensors="pt")
        return processor(images=list(images), text=list(prompts), padding=True, return_tensors="pt")

    def forward(self, model: nn.Module, inputs: BatchFeature, extra: dict[str, Any]) -> Any:
        if "input_ids" not in inputs:
            return model.get_image_features(pixel_values=inputs["pixel_values"], **extra)
        return model(**inputs, **extra)


DUAL_ENCODER = DualEncoderAdapter(max_images=1, text_only=False)
