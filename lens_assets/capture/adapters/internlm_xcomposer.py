"""InternLM-XComposer2-VL / 2.5 (internlm, remote code): the model builds its own input
embeddings, one image at a time, and `im_mask` marks the image positions."""

from __future__ import annotations

import inspect
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature

from lens_assets.capture.adapters.base import (
    VISION_SEGMENTS,
    ActivationShapeError,
    Adapter,
    ModelLayout,
    Sequences,
    per_sample,
    token_roles,
)
from lens_assets.capture.adapters.remote_code import (
    RemoteProcessor,
    load_auto_model,
    load_tokenizer,
    model_dtype,
    pad_stack,
)


@dataclass
class XComposerAdapter(Adapter):
    """InternLM-XComposer2-VL and InternLM-XComposer-2.5 (internlm), following the public
    modeling code and model cards' `chat`; untested offline.

    The model builds its own input embeddings: each image goes through the model's
    `vis_processor` (2.5 first applies its module's `Image_transform` HD tiling with `hd_num`),
    then `interleav_wrap_chat` (2.5: `(query, [image], history, meta_instruction, hd_num=)`,
    which encodes the image itself; 2-VL: `(tokenizer, "<ImageHere>" + query, encoded image,
    history, meta_instruction)`) gives the embeddings and `im_mask`, the image positions
    (where the image role goes, and where the Partial-LoRA weights apply). Samples are padded
    on the right and the model runs on `inputs_embeds` with `im_mask`. That all happens in the
    forward pass, under the hooks, one image at a time, so a vision module's hook keeps only
    the last image of a batch: vision modules need `batch_size: 1` (an error says so). The
    4KHD variant's HD preprocessing is not reproduced. A text-only row takes `chat`'s path
    without an image and has no image positions.
    """

    model_class: str = "AutoModel"
    vision_segments: frozenset[str] = field(default=VISION_SEGMENTS | {"vit", "vision_proj"})
    hd_num: int = 24  # 2.5's `chat` default

    def load(self, path: str, kwargs: dict[str, Any], trust_remote_code: bool) -> tuple[Any, Any]:
        model = load_auto_model(self.model_class, path, kwargs, trust_remote_code)
        tokenizer = load_tokenizer(path, trust_remote_code)
        model.tokenizer = tokenizer  # as the model cards do; `interleav_wrap_chat` reads it
        return model, RemoteProcessor(tokenizer, model_ref=weakref.ref(model))

    def prepare(
        self, processor: Any, images: Sequence[Image.Image], prompts: Sequence[str]
    ) -> BatchFeature:
        return BatchFeature(data={"images": list(images), "prompts": list(prompts)})

    def forward(self, model: nn.Module, inputs: BatchFeature, extra: dict[str, Any]) -> Any:
        remote: Any = model  # the checkpoint's own class: its methods are not nn.Module's
        code = sys.modules[type(model).__module__]
        meta = getattr(code, "meta_instruction", "")
        tiling = getattr(code, "Image_transform", None)
        wrap = remote.interleav_wrap_chat
        takes_query_first = next(iter(inspect.signature(wrap).parameters)) == "query"
        device, dtype = next(model.parameters()).device, model_dtype(model)
        embeds, image_masks = [], []
        for row, prompt in zip(per_sample(inputs["images"]), inputs["prompts"], strict=True):
            if not row:  # a text-only row: `chat`'s own path without an image
                embed, image_mask = _text_only(remote, wrap, takes_query_first, prompt, meta)
                embeds.append(embed.to(device))
                image_masks.append(image_mask.to(device))
                continue
            picture = row[0].convert("RGB")
            if tiling is not None:
                picture = tiling(picture, hd_num=self.hd_num)
            pixels = remote.vis_processor(picture).unsqueeze(0).to(device, dtype)
            if takes_query_first:  # 2.5: the image is encoded inside
                wrapped = wrap(
                    prompt, [pixels], history=[], meta_instruction=meta, hd_num=self.hd_num
                )
            else:  # 2-VL: the image goes in encoded
                encoded = remote.encode_img(pixels)
                wrapped = wrap(remote.tokenizer, f"<ImageHere>{prompt}", encoded, [], meta)
            embeds.append(wrapped[0]["inputs_embeds"][0])
            image_masks.append(wrapped[1][0].bool())
        # Kept on the inputs: the roles of the LLM's positions are read from them afterwards.
        inputs["im_mask"] = pad_stack(image_masks, False)
        inputs["attention_mask"] = pad_stack(
            [torch.ones_like(mask, dtype=torch.long) for mask in image_masks], 0
        )
        return model(
            inputs_embeds=pad_stack(embeds, 0.0),
            attention_mask=inputs["attention_mask"],
            im_mask=inputs["im_mask"],
            **extra,
        )

    def text_roles(self, inputs: BatchFeature, layout: ModelLayout) -> torch.Tensor:
        return token_roles(inputs["attention_mask"], inputs["im_mask"])

    def sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        if self.is_vision(name) and batch_size > 1:
            raise ActivationShapeError(
                f"InternLM-XComposer encodes one image per call, so vision module {name!r} "
                f"kept only the last of {batch_size} images; extract vision modules with "
                "batch_size: 1"
            )
        return super().sequences(name, output, inputs, layout, batch_size)

    def tile_counts(
        self, name: str, rows: int, inputs: BatchFeature, layout: ModelLayout, batch_size: int
    ) -> list[int]:
        return [rows]  # one image: every row is one of its HD tiles


def _text_only(
    remote: Any, wrap: Any, takes_query_first: bool, prompt: str, meta: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings, image mask) of a prompt without an image, as `chat` builds it: 2.5 wraps
    an empty image list; 2-VL tokenizes with `build_inputs` and embeds the ids."""
    if takes_query_first:
        wrapped = wrap(prompt, [], history=[], meta_instruction=meta)
        return wrapped[0]["inputs_embeds"][0], wrapped[1][0].bool()
    ids = remote.build_inputs(remote.tokenizer, prompt, [], meta)["input_ids"]
    embeds = remote.get_input_embeddings()(ids.to(remote.device))[0]
    return embeds, torch.zeros(embeds.shape[0], dtype=torch.bool)


XCOMPOSER = XComposerAdapter(max_images=1)
