"""BLIP-2 and InstructBLIP: a Q-Former's learned queries stand between the ViT and the LLM.

What differs from the generic path:

* The Q-Former (``qformer``) and ``language_projection`` belong to the image side: they output
  ``(batch, num_query_tokens, dim)`` per image, which cannot be lined up with ``input_ids``.
* The processor itself puts ``num_query_tokens`` ``<image>`` tokens before the text (before BOS
  too), so the prompt goes in as it is; the generic fallback would add one ``<image>`` more.
* InstructBLIP's Q-Former also reads the instruction (``qformer_input_ids``): its layers output
  the queries followed by the instruction's tokens, which are text, and padding. The
  instruction is always padded on the right, as its positions count from its first token.
* Query tokens summarise the whole image, so no Q-Former or LLM image position sits on one
  patch of the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    VISION_SEGMENTS,
    VISION_TOWERS,
    ActivationShapeError,
    Adapter,
    ModelLayout,
    PatchCells,
    PatchGridError,
    Sequences,
)
from lens_assets.capture.token_roles import TokenRole

QUERY_SEGMENTS = frozenset({"qformer", "language_projection"})


@dataclass
class QueryLayout(ModelLayout):
    """The generic layout plus how many learned queries stand for one image."""

    num_query_tokens: int = 0


@dataclass
class QueryAdapter(Adapter):
    """Reads BLIP-2 and InstructBLIP back: Q-Former outputs per image, the prompt as given."""

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        inputs = super().prepare(processor, images, prompts)
        if "qformer_input_ids" in inputs and "qformer_attention_mask" in inputs:
            # The processor pads the Q-Former's instruction on the LLM tokenizer's side, left
            # while generating; its absolute positions count from the first token whatever
            # the LLM does, so the instruction always starts at position 0.
            mask = inputs["qformer_attention_mask"]
            order = torch.argsort((mask == 0).int(), dim=1, stable=True)
            inputs["qformer_input_ids"] = inputs["qformer_input_ids"].gather(1, order)
            inputs["qformer_attention_mask"] = mask.gather(1, order)
        return inputs

    def layout(self, model: nn.Module) -> QueryLayout:
        generic = super().layout(model)
        queries = getattr(getattr(model, "config", None), "num_query_tokens", 0)
        return QueryLayout(
            cls_towers=generic.cls_towers,
            image_token_id=generic.image_token_id,
            num_query_tokens=int(queries or 0),
        )

    def prompt_text(self, processor: Any, prompt: str, n_images: int = 1) -> str:
        """The prompt alone: the processor adds the query tokens' ``<image>`` placeholders."""
        return prompt

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        queries = getattr(layout, "num_query_tokens", 0)
        instruction = inputs.get("qformer_attention_mask")
        if (
            "qformer" not in name.split(".")
            or output.dim() != 3
            or output.shape[0] != batch_size
            or output.shape[1] <= queries
            or instruction is None
        ):
            return super().vision_sequences(name, output, inputs, layout, batch_size)
        if output.shape[1] != queries + instruction.shape[1]:
            raise ActivationShapeError(
                f"Q-Former module {name!r} produced {output.shape[1]} positions, which are "
                f"neither its {queries} queries nor the queries and the {instruction.shape[1]} "
                "instruction tokens"
            )
        roles = torch.full(output.shape[:2], TokenRole.TEXT, device=output.device)
        roles[:, :queries] = TokenRole.IMAGE
        roles[:, queries:][instruction.to(output.device) == 0] = TokenRole.PAD
        return Sequences(output, roles)

    def patch_cells(
        self, name: str, count: int, inputs: BatchFeature, layout: ModelLayout, sample: int
    ) -> PatchCells:
        """Only the ViT's positions are patches; a query attends to the whole image."""
        if not any(part in VISION_TOWERS for part in name.split(".")):
            raise PatchGridError(
                f"module {name!r} holds Q-Former query tokens, each a summary of the whole "
                "image, not a patch of it"
            )
        return super().patch_cells(name, count, inputs, layout, sample)


BLIP = QueryAdapter(vision_segments=VISION_SEGMENTS | QUERY_SEGMENTS, max_images=1, text_only=False)
