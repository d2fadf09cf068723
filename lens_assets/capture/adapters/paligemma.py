"""PaliGemma: a plain task prompt after the image, and no training labels in the forward pass.

PaliGemma is prompted with task prefixes ("caption en", "answer en ..."), not chat turns: the
prompt is ``<image>`` followed by the text, which the processor expands into the image tokens,
``<bos>``, the text and a newline. The processor also returns ``labels`` (every prefix position
masked with -100) for fine-tuning; passed on, they make the model compute a loss that is
meaningless here (NaN for a prefix-only batch), so they never reach ``forward``.
``token_type_ids`` do, since they mark the prefix the LLM attends to bidirectionally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from transformers import BatchFeature

from lens_assets.capture.adapters.base import VISION_SEGMENTS, Adapter

TRAINING_ONLY_INPUTS = ("labels",)


@dataclass
class PaliGemmaAdapter(Adapter):
    """The generic path with PaliGemma's prompt format and without its training inputs."""

    def prompt_text(self, processor: Any, prompt: str, n_images: int = 1) -> str:
        """``<image>`` then the prompt, never a chat template (PaliGemma has no chat turns)."""
        return f"{processor.image_token}{prompt}"

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        inputs = super().prepare(processor, images, prompts)
        for key in TRAINING_ONLY_INPUTS:
            inputs.pop(key, None)
        return inputs


PALIGEMMA = PaliGemmaAdapter(vision_segments=VISION_SEGMENTS, max_images=1, text_only=False)
