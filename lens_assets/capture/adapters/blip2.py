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
* One image per prompt: the processor prepends one image's queries to every text and the
  model fills them from one image per sample, so a row of several images is refused.
* A row without an image runs the language model on the prompt alone: the processor then
  adds no queries, and since the full forward always runs the Q-Former on pixels, a batch
  without images calls the language model itself, on the embeddings the full forward would
  give it. In a mixed batch only the rows with an image get queries and pixels; the model
  fills the queries row by row, so text-only rows see their prompt alone there too.
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
    image_counts,
    padding_side_of,
    per_sample,
)
from lens_assets.capture.adapters.forward import forward_parameters
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
        self, processor: Any, images: Sequence[Any], prompts: Sequence[str]
    ) -> BatchFeature:
        rows = per_sample(images)
        if all(rows):
            return self._prepare_images(processor, [row[0] for row in rows], prompts)
        side = padding_side_of(processor)
        text_only = processor(text=list(prompts), padding=True, padding_side=side)
        if not any(rows):
            return BatchFeature(_llm_keys(text_only), tensor_type="pt")
        # A mixed batch: the image rows as the processor makes them, the others as text alone,
        # each sample's tokens padded again to one length.
        shown = [i for i, row in enumerate(rows) if row]
        inputs = self._prepare_images(
            processor, [rows[i][0] for i in shown], [prompts[i] for i in shown]
        )
        tokens = [list(ids) for ids in text_only["input_ids"]]
        for at, sample in enumerate(shown):
            mask = inputs["attention_mask"][at].bool()
            tokens[sample] = inputs["input_ids"][at][mask].tolist()
        pad = processor.tokenizer.pad_token_id
        ids, mask = _pad(tokens, 0 if pad is None else pad, side)
        inputs["input_ids"], inputs["attention_mask"] = ids, mask
        return inputs

    def _prepare_images(
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

    def forward(self, model: nn.Module, inputs: BatchFeature, extra: dict[str, Any]) -> Any:
        if "pixel_values" in inputs:
            return super().forward(model, inputs, extra)
        language_model: Any = model.language_model
        known = forward_parameters(language_model)
        usable = {k: v for k, v in extra.items() if known is None or k in known}
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        return language_model(
            inputs_embeds=embeds, attention_mask=inputs.get("attention_mask"), **usable
        )

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
            or instruction is None
            or output.shape[0] != instruction.shape[0]  # one row per image
            or output.shape[1] <= queries
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
        if output.shape[0] == batch_size:
            return Sequences(output, roles)
        # A mixed batch: the Q-Former ran on the rows with an image only.
        shown = [i for i, n in enumerate(image_counts(inputs, batch_size)) if n]
        hidden = output.new_zeros((batch_size, *output.shape[1:]))
        spread = torch.full(hidden.shape[:2], TokenRole.PAD, device=output.device)
        hidden[shown], spread[shown] = output, roles
        return Sequences(hidden, spread)

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


def _llm_keys(encoding: Any) -> dict[str, Any]:
    """The language model's inputs of a processor's text encoding (no Q-Former instruction,
    which only runs with an image)."""
    return {k: encoding[k] for k in ("input_ids", "attention_mask") if k in encoding}


def _pad(tokens: list[list[int]], pad: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists padded to one length on `side`, with their attention mask."""
    longest = max(len(t) for t in tokens)
    ids = torch.full((len(tokens), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(tokens), longest), dtype=torch.long)
    for row, sample in enumerate(tokens):
        where = slice(longest - len(sample), longest) if side == "left" else slice(0, len(sample))
        ids[row, where] = torch.as_tensor(sample, dtype=torch.long)
        mask[row, where] = 1
    return ids, mask


# One image per prompt (see the module docstring); text-only rows run the language model alone.
BLIP = QueryAdapter(
    vision_segments=VISION_SEGMENTS | QUERY_SEGMENTS, max_images=1, generates_text_only=False
)
