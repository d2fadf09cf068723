"""Molmo v1 (allenai, remote code): samples from `processor.process`, the image role on
`image_input_idx`, crops joined per image. Molmo2 (native in transformers) is molmo2.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import AutoProcessor, BatchFeature

from lens_assets.capture.adapters.base import (
    VISION_SEGMENTS,
    ActivationShapeError,
    Adapter,
    ModelLayout,
    Sequences,
    join_tiles,
    per_sample,
    token_roles,
)
from lens_assets.capture.adapters.remote_code import load_auto_model, pad_stack, present


@dataclass
class MolmoAdapter(Adapter):
    """Molmo v1 (allenai Molmo-7B-D/O, 72B, MolmoE), following the public modeling and
    preprocessing code and the model card; untested offline.

    As the card does, `processor.process(images=[image], text=prompt)` builds one sample
    (the processor writes the "User: ... Assistant:" turn itself); samples are padded with -1,
    Molmo's own padding value (its forward maps -1 ids to 0 and counts positions from the
    mask), crops included. The image role goes on the positions `image_input_idx` names. The
    ViT (`vision_backbone.image_vit`, class token first) sees every crop of every image on its
    batch axis and the projector outputs (batch, crops, tokens, dim); both are joined per image
    with a tile column, padding crops left out. A text-only row is processed without images
    (the processor then only tokenizes) and holds nothing but padding crops in a batch.
    """

    model_class: str = "AutoModelForCausalLM"
    vision_segments: frozenset[str] = field(default=VISION_SEGMENTS | {"vision_backbone"})

    def load(self, path: str, kwargs: dict[str, Any], trust_remote_code: bool) -> tuple[Any, Any]:
        model = load_auto_model(self.model_class, path, kwargs, trust_remote_code)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        return model, processor

    def layout(self, model: nn.Module) -> ModelLayout:
        return ModelLayout(cls_towers=present(model, ("model.vision_backbone.image_vit",)))

    def prepare(
        self, processor: Any, images: Sequence[Any], prompts: Sequence[str]
    ) -> BatchFeature:
        rows = [
            processor.process(images=row or None, text=prompt)
            for row, prompt in zip(per_sample(images), prompts, strict=True)
        ]
        input_ids = pad_stack([torch.as_tensor(row["input_ids"]) for row in rows], -1)
        data = {"input_ids": input_ids, "attention_mask": (input_ids != -1).long()}
        for key in ("images", "image_input_idx", "image_masks"):
            present_in = [torch.as_tensor(row[key]) for row in rows if row.get(key) is not None]
            if present_in:  # a text-only row has none: no crops, all padding (-1)
                empty = present_in[0].new_full((0, *present_in[0].shape[1:]), -1)
                values = [torch.as_tensor(row[key]) if row.get(key) is not None else empty
                          for row in rows]  # fmt: skip
                data[key] = pad_stack(values, -1)
        return BatchFeature(data=data)

    def text_roles(self, inputs: BatchFeature, layout: ModelLayout) -> torch.Tensor:
        ids = inputs["input_ids"]
        image = torch.zeros_like(ids, dtype=torch.bool)
        if inputs.get("image_input_idx") is None:  # a batch of text-only rows
            return token_roles(inputs.get("attention_mask"), image)
        index = inputs["image_input_idx"].reshape(len(ids), -1).long()
        valid = index >= 0
        rows = torch.arange(len(ids), device=ids.device)[:, None].expand_as(index)
        image[rows[valid], index[valid]] = True
        return token_roles(inputs.get("attention_mask"), image)

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        images = inputs["images"]
        real = ~(images == -1).flatten(2).all(dim=2)  # (batch, crops): padding crops are all -1
        crops = real.shape[1]
        if output.dim() == 4 and tuple(output.shape[:2]) == (batch_size, crops):
            output = output.flatten(0, 1)
        if output.dim() != 3 or output.shape[0] != batch_size * crops:
            raise ActivationShapeError(
                f"vision module {name!r} produced shape {tuple(output.shape)}, not one row per "
                f"crop ({batch_size} images x {crops} crops)"
            )
        has_cls = any(name == t or name.startswith(t + ".") for t in layout.cls_towers)
        kept = output[real.reshape(-1).to(output.device)]
        return join_tiles(kept, real.sum(dim=1).tolist(), has_cls)


MOLMO = MolmoAdapter(max_images=1)
