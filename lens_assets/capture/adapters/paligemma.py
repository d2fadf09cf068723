"""PaliGemma: a plain task prompt after the images, and no training labels in the forward pass.

PaliGemma is prompted with task prefixes ("caption en", "answer en ..."), not chat turns: the
prompt is one ``<image>`` per image followed by the text, which the processor expands into
``image_seq_length`` image tokens per image, ``<bos>``, the text and a newline. The processor
takes several images per prompt (a flat list, as many as the prompts' ``<image>`` tokens) and
the model scatters each image's tokens in order; PaliGemma was trained on one image per prompt,
so several are a probe of the model rather than its use. A row's images are adjacent runs of
the same length, which the generic equal split names.

The processor refuses a prompt without images (``images`` are required), and with images
given it puts ``<bos>`` after a prompt's last ``<image>`` (or six characters in, where a prompt
has none). A batch holding a text-only row is therefore built the way the processor builds it,
with its own tokenizer and image processor: ``<bos>`` then the text and a newline for a row
without images. The model runs without ``pixel_values``.

The processor also returns ``labels`` (every prefix position masked with -100) for
fine-tuning; passed on, they make the model compute a loss that is meaningless here (NaN for a
prefix-only batch), so they never reach ``forward``. ``token_type_ids`` do, since they mark the
prefix the LLM attends to bidirectionally.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    VISION_SEGMENTS,
    Adapter,
    padding_side_of,
    per_sample,
)

TRAINING_ONLY_INPUTS = ("labels",)


@dataclass
class PaliGemmaAdapter(Adapter):
    """The generic path with PaliGemma's prompt format and without its training inputs."""

    def prompt_text(self, processor: Any, prompt: str, n_images: int = 1) -> str:
        """``<image>`` per image then the prompt, never a chat template (PaliGemma has no chat
        turns)."""
        return f"{processor.image_token * n_images}{prompt}"

    def prepare(
        self, processor: Any, images: Sequence[Any], prompts: Sequence[str]
    ) -> BatchFeature:
        rows = per_sample(images)
        if all(rows):
            inputs = super().prepare(processor, images, prompts)
        else:
            inputs = self.prepare_with_text_only(processor, rows, prompts)
        for key in TRAINING_ONLY_INPUTS:
            inputs.pop(key, None)
        return inputs

    def prepare_with_text_only(
        self, processor: Any, rows: Sequence[Sequence[Image.Image]], prompts: Sequence[str]
    ) -> BatchFeature:
        """What the processor makes of these rows, for a batch it refuses or misreads (one with
        a row without images): each image's tokens, ``<bos>``, the prompt and a newline,
        tokenized with token type ids (all prefix), and the pixels of every image in order."""
        tokenizer = processor.tokenizer
        image_tokens = processor.image_token * processor.image_seq_length
        texts = [
            f"{image_tokens * len(row)}{tokenizer.bos_token}{prompt}\n"
            for row, prompt in zip(rows, prompts, strict=True)
        ]
        inputs = tokenizer(
            texts,
            padding=True,
            padding_side=padding_side_of(processor),
            return_token_type_ids=True,
            return_tensors="pt",
        )
        flat = [image for row in rows for image in row]
        if flat:
            pixels = processor.image_processor(flat, return_tensors="pt")
            inputs["pixel_values"] = pixels["pixel_values"]
        return BatchFeature(dict(inputs))


PALIGEMMA = PaliGemmaAdapter(vision_segments=VISION_SEGMENTS)
