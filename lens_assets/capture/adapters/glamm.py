"""GLaMM (mbzuai-oryx): the groundingLMM repository's LLaVA-1-style model, whose one image
placeholder id becomes the image's positions in the LLM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import AutoTokenizer, BatchFeature

from lens_assets.capture.adapters.base import (
    VISION_SEGMENTS,
    ActivationShapeError,
    Adapter,
    ModelLayout,
    Sequences,
    image_counts,
    per_sample,
    token_roles,
)
from lens_assets.capture.adapters.remote_code import RemoteProcessor, pad_stack
from lens_assets.capture.token_roles import TokenRole

IMAGE_TOKEN_INDEX = -200  # LLaVA's placeholder id, replaced by the image features
GLAMM_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions."
)


@dataclass
class SplicedLayout(ModelLayout):
    """A layout for LLaVA-1-style models, whose one placeholder id becomes many positions."""

    image_positions: int = 0  # LLM positions the placeholder of one image expands into


@dataclass
class GLaMMAdapter(Adapter):
    """GLaMM (mbzuai-oryx), following the public groundingLMM code (model/GLaMM.py, its
    LLaVA-1 base and eval scripts); untested offline.

    GLaMM checkpoints carry no modeling files and their config says model_type "llava" (the
    LLaVA-1 format), so the code comes from the groundingLMM repository, which must be on the
    Python path (`model.GLaMM`); it is third-party code all the same, so this adapter too needs
    `trust_remote_code: true`. As the eval scripts do: the llava_v1 conversation with "The
    <im_start><image><im_end> provides an overview of the picture.\\n" before the prompt, the
    `<image>` turned into id -200, CLIP pixel values from the checkpoint's `vision_tower`, and
    the LLaVA forward (`past_key_values=None` keeps GLaMM off its segmentation path). The LLM
    sees the image's features where the -200 was, so text roles expand that position. `lens
    modules` does not work for GLaMM (its classes are not transformers auto classes). A
    text-only row is the same turn without the image sentence and placeholder.
    """

    model_class: str = "AutoModelForCausalLM"
    vision_segments: frozenset[str] = field(default=VISION_SEGMENTS | {"mm_projector"})

    def load(self, path: str, kwargs: dict[str, Any], trust_remote_code: bool) -> tuple[Any, Any]:
        if not trust_remote_code:
            from lens_assets.resources.runtime import RemoteCodeError

            raise RemoteCodeError(
                "GLaMM runs the groundingLMM repository's model code; LensFlow runs it only when "
                "the model config says `trust_remote_code: true`"
            )
        try:
            from model.GLaMM import GLaMMForCausalLM  # type: ignore[import-not-found]
        except ImportError as error:
            raise ImportError(
                "GLaMM's model code is not importable: clone "
                "https://github.com/mbzuai-oryx/groundingLMM, install its requirements and put "
                "it on PYTHONPATH (`model.GLaMM`)"
            ) from error
        from transformers import CLIPImageProcessor

        tokenizer = AutoTokenizer.from_pretrained(
            path, use_fast=False, padding_side="right", trust_remote_code=trust_remote_code
        )
        tokenizer.pad_token = tokenizer.unk_token
        seg_token = tokenizer("[SEG]", add_special_tokens=False).input_ids[0]
        model = GLaMMForCausalLM.from_pretrained(path, seg_token_idx=seg_token, **kwargs)
        model.config.eos_token_id = tokenizer.eos_token_id
        model.config.bos_token_id = tokenizer.bos_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        base = model.get_model()
        base.initialize_vision_modules(base.config)
        if kwargs.get("dtype") is not None:
            model.to(kwargs["dtype"])
        images = CLIPImageProcessor.from_pretrained(model.config.vision_tower)
        return model.eval(), RemoteProcessor(tokenizer, image_processor=images)

    def layout(self, model: nn.Module) -> ModelLayout:
        base = super().layout(model)
        remote: Any = model
        tower = remote.get_model().get_vision_tower()
        positions = getattr(tower, "num_patches", None)
        if positions is None:
            config = tower.config
            positions = (config.image_size // config.patch_size) ** 2
        return SplicedLayout(cls_towers=base.cls_towers, image_positions=int(positions))

    def prompt_text(self, processor: Any, prompt: str, n_images: int = 1) -> str:
        image = "The <im_start><image><im_end> provides an overview of the picture.\n"
        return f"{GLAMM_SYSTEM} USER: {image if n_images else ''}{prompt} ASSISTANT:"

    def prepare(
        self, processor: Any, images: Sequence[Any], prompts: Sequence[str]
    ) -> BatchFeature:
        tokenizer = processor.tokenizer
        rows = per_sample(images)
        ids = []
        for row, prompt in zip(rows, prompts, strict=True):
            text = self.prompt_text(processor, prompt, len(row))
            if not row:  # a text-only row: the plain llava_v1 turn
                ids.append(torch.tensor(tokenizer(text).input_ids))
                continue
            before, after = text.split("<image>")
            head = tokenizer(before).input_ids  # with BOS, as LLaVA's tokenizer_image_token
            tail = tokenizer(after, add_special_tokens=False).input_ids
            ids.append(torch.tensor([*head, IMAGE_TOKEN_INDEX, *tail]))
        data = {
            "input_ids": pad_stack(ids, tokenizer.pad_token_id),
            "attention_mask": pad_stack([torch.ones_like(row) for row in ids], 0),
        }
        if any(rows):
            # LLaVA-1 takes one image per sample, even from a sample without a placeholder
            # (it skips that one's features): a text-only row holds a black stand-in, which
            # the vision modules' readback marks as padding.
            pictures = [row[0].convert("RGB") if row else _stand_in(rows) for row in rows]
            data["images"] = processor.image_processor(pictures, return_tensors="pt")[
                "pixel_values"
            ]
        return BatchFeature(data=data)

    def forward(self, model: nn.Module, inputs: BatchFeature, extra: dict[str, Any]) -> Any:
        return model(**inputs, past_key_values=None, **extra)

    def text_roles(self, inputs: BatchFeature, layout: ModelLayout) -> torch.Tensor:
        ids = inputs["input_ids"]
        short = token_roles(inputs.get("attention_mask"), torch.zeros_like(ids, dtype=torch.bool))
        count = layout.image_positions if isinstance(layout, SplicedLayout) else 0
        rows = []
        for sample in range(len(ids)):
            where = (ids[sample] == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            if len(where) > 1:
                raise ActivationShapeError(
                    f"sample {sample} has {len(where)} image placeholders, GLaMM's prompt one"
                )
            if not where:  # a text-only row: its tokens as they are
                rows.append(short[sample])
                continue
            at = where[0]
            image = short.new_full((count,), TokenRole.IMAGE)
            rows.append(torch.cat([short[sample, :at], image, short[sample, at + 1 :]]))
        # LLaVA-1 pads the spliced embeddings on the right to the longest sample.
        longest = max(len(row) for row in rows)
        return torch.stack(
            [torch.cat([row, row.new_full((longest - len(row),), TokenRole.PAD)]) for row in rows]
        )

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        sequences = super().vision_sequences(name, output, inputs, layout, batch_size)
        counts = image_counts(inputs, batch_size)
        if sequences.roles is not None and 0 in counts:
            stand_ins = torch.tensor([count == 0 for count in counts], device=output.device)
            sequences.roles[stand_ins] = TokenRole.PAD  # the black stand-ins of text-only rows
        return sequences


def _stand_in(rows: Sequence[Sequence[Image.Image]]) -> Image.Image:
    """A black picture the size of the batch's first image."""
    first = next(row[0] for row in rows if row)
    return Image.new("RGB", first.size)


GLAMM = GLaMMAdapter(max_images=1)
