"""CogVLM / CogVLM2 (THUDM, remote code): the prompt from the model's own builder, the image
role on token type 1."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    VISION_SEGMENTS,
    Adapter,
    ModelLayout,
    per_sample,
    token_roles,
)
from lens_assets.capture.adapters.remote_code import (
    RemoteProcessor,
    load_auto_model,
    load_tokenizer,
    model_dtype,
    pad_stack,
    present,
)

LANGUAGE_TOKEN_TYPE = 0
VISION_TOKEN_TYPE = 1


@dataclass
class CogVLMAdapter(Adapter):
    """CogVLM / CogVLM2 (THUDM), following the public modeling code and model card.

    The prompt comes from the model's own `build_conversation_input_ids(tokenizer, query=,
    history=[], images=[image])` (its default template), one image per sample; samples are
    padded to a batch (token type 0 for padding) and the images go in as a list of one-image
    lists. An image occupies the positions of token type 1 (its patches plus the `boi` and
    `eoi` embeddings), which is where the image role goes; CogVLM fills them with pad tokens, so
    `input_ids` cannot tell them apart. Tested offline on a tiny model with this interface,
    untested against the real checkpoints. cogvlm-chat-hf ships without a tokenizer: copy
    lmsys/vicuna-7b-v1.5's tokenizer files into its folder, as its model card's loader implies.
    """

    model_class: str = "AutoModelForCausalLM"
    vision_segments: frozenset[str] = field(default=VISION_SEGMENTS | {"vision"})

    def load(self, path: str, kwargs: dict[str, Any], trust_remote_code: bool) -> tuple[Any, Any]:
        model = load_auto_model(self.model_class, path, kwargs, trust_remote_code)
        hint = (
            "; cogvlm-chat-hf ships without one: copy lmsys/vicuna-7b-v1.5's tokenizer files "
            "into the checkpoint folder"
        )
        tokenizer = load_tokenizer(path, trust_remote_code, hint)
        return model, RemoteProcessor(tokenizer, model_ref=weakref.ref(model))

    def layout(self, model: nn.Module) -> ModelLayout:
        # The EVA tower puts a class token in front; `linear_proj` already drops it.
        towers = present(model, ("model.vision.patch_embedding", "model.vision.transformer"))
        return ModelLayout(cls_towers=towers)

    def prepare(
        self, processor: Any, images: Sequence[Any], prompts: Sequence[str]
    ) -> BatchFeature:
        """A row without images is built with `images=None`, as the model card's text-only
        chat is: token type 0 throughout, no pixels; a batch of such rows passes no images."""
        tokenizer = processor.tokenizer
        built = [
            processor.model.build_conversation_input_ids(
                tokenizer, query=prompt, history=[], images=row or None
            )
            for row, prompt in zip(per_sample(images), prompts, strict=True)
        ]
        side = getattr(tokenizer, "padding_side", "right")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return BatchFeature(
            data={
                "input_ids": pad_stack([b["input_ids"] for b in built], pad_id, side),
                "token_type_ids": pad_stack(
                    [b["token_type_ids"] for b in built], LANGUAGE_TOKEN_TYPE, side
                ),
                "attention_mask": pad_stack([b["attention_mask"] for b in built], 0, side),
                "images": [list(b["images"]) for b in built]
                if any(len(b["images"]) for b in built)
                else None,
            }
        )

    def forward(self, model: nn.Module, inputs: BatchFeature, extra: dict[str, Any]) -> Any:
        dtype = model_dtype(model)
        if inputs.get("images") is None:  # text only: the language model alone
            return model(**{k: v for k, v in inputs.items() if k != "images"}, **extra)
        images = [[image.to(dtype) for image in sample] for sample in inputs["images"]]
        return model(**{**inputs, "images": images}, **extra)

    def text_roles(self, inputs: BatchFeature, layout: ModelLayout) -> torch.Tensor:
        return token_roles(
            inputs.get("attention_mask"), inputs["token_type_ids"] == VISION_TOKEN_TYPE
        )


# One image per conversation (its template has one image slot); text-only rows run.
COGVLM = CogVLMAdapter(max_images=1)
