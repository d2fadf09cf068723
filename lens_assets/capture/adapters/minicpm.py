"""MiniCPM-V 2.x / MiniCPM-o (openbmb, remote code): `chat`'s prompt, the image role on
`image_bound`, slices joined per image. MiniCPM-V 4.6 (native in transformers) is
minicpm_v.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
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
from lens_assets.capture.adapters.remote_code import load_auto_model, model_dtype, pad_stack
from lens_assets.capture.token_roles import TokenRole


@dataclass
class MiniCPMAdapter(Adapter):
    """MiniCPM-V 2.6 and MiniCPM-o 2.6 (openbmb), following the public modeling and processing
    code and the model cards' `chat`; untested offline.

    As `chat` does: the user turn is "(<image>./</image>)\\n" + prompt through the tokenizer's
    chat template, and the processor takes a list of texts and a list of image lists. Each
    sample is processed alone and the batch is padded on the right here, so `image_bound` (the
    spans the image slices' query tokens fill, where the image role goes) stays valid. The
    model is called as `model(data=..., attention_mask=...)`, `data` holding input_ids,
    position_ids, pixel_values (per sample, per slice), tgt_sizes and image_bound. The vision
    tower (`vpm`) and the resampler see every slice of every image on their batch axis; slices
    are joined per image with a tile column, and the padding patches of smaller slices are
    marked pad. A text-only row is tokenized alone and has no slices. The processor takes
    several images per prompt, but its slices cannot be told apart per image from what it
    returns, so a row holds at most one image here. MiniCPM-V 2.0 and 2.5 predate this
    processor interface and are not covered.
    """

    model_class: str = "AutoModel"
    vision_segments: frozenset[str] = field(default=VISION_SEGMENTS | {"vpm", "resampler"})
    image_placeholder: str = "(<image>./</image>)"

    def load(self, path: str, kwargs: dict[str, Any], trust_remote_code: bool) -> tuple[Any, Any]:
        model = load_auto_model(self.model_class, path, kwargs, trust_remote_code)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        processor.tokenizer.padding_side = "right"
        return model, processor

    def prompt_text(self, processor: Any, prompt: str, n_images: int = 1) -> str:
        content = f"{self.image_placeholder * n_images}\n{prompt}" if n_images else prompt
        messages = [{"role": "user", "content": content}]
        return processor.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def prepare(
        self, processor: Any, images: Sequence[Any], prompts: Sequence[str]
    ) -> BatchFeature:
        rows = [
            self._sample(processor, row, prompt)
            for row, prompt in zip(per_sample(images), prompts, strict=True)
        ]
        ids = [row["input_ids"][0].long() for row in rows]
        pad_id = processor.tokenizer.pad_token_id
        input_ids = pad_stack(ids, pad_id if pad_id is not None else 0)
        mask = pad_stack([torch.ones_like(row) for row in ids], 0)
        return BatchFeature(
            data={
                "input_ids": input_ids,
                "attention_mask": mask,
                "position_ids": torch.clamp(mask.cumsum(dim=1) - 1, min=0),
                "pixel_values": [list(row["pixel_values"][0]) for row in rows],
                "tgt_sizes": [row["tgt_sizes"][0] for row in rows],
                "image_bound": [row["image_bound"][0] for row in rows],
            }
        )

    def _sample(self, processor: Any, images: list[Image.Image], prompt: str) -> dict[str, Any]:
        """One sample through the processor, as `chat` builds it. A text-only row goes in
        without images (the processor then only tokenizes) and gets no slices, no target sizes
        and no image bounds, which the model's embedding step reads as "no image"."""
        text = self.prompt_text(processor, prompt, len(images))
        if images:
            return processor([text], [images], return_tensors="pt")
        ids = processor([text], None, return_tensors="pt")["input_ids"]
        none = torch.zeros((0, 2), dtype=torch.long)
        return {"input_ids": ids, "pixel_values": [[]], "tgt_sizes": [none], "image_bound": [none]}

    def forward(self, model: nn.Module, inputs: BatchFeature, extra: dict[str, Any]) -> Any:
        dtype = model_dtype(model)
        data = {
            "input_ids": inputs["input_ids"],
            "position_ids": inputs["position_ids"],
            "pixel_values": [[p.to(dtype) for p in sample] for sample in inputs["pixel_values"]],
            "tgt_sizes": inputs["tgt_sizes"],
            "image_bound": inputs["image_bound"],
        }
        return model(data=data, attention_mask=inputs["attention_mask"], **extra)

    def text_roles(self, inputs: BatchFeature, layout: ModelLayout) -> torch.Tensor:
        ids = inputs["input_ids"]
        image = torch.zeros_like(ids, dtype=torch.bool)
        for sample, bounds in enumerate(inputs["image_bound"]):
            for start, end in torch.as_tensor(bounds).reshape(-1, 2).tolist():
                image[sample, start:end] = True
        return token_roles(inputs.get("attention_mask"), image)

    def vision_sequences(
        self,
        name: str,
        output: torch.Tensor,
        inputs: BatchFeature,
        layout: ModelLayout,
        batch_size: int,
    ) -> Sequences:
        counts = [len(sample) for sample in inputs["pixel_values"]]
        if output.dim() != 3 or output.shape[0] != sum(counts):
            raise ActivationShapeError(
                f"vision module {name!r} produced shape {tuple(output.shape)}, not one row per "
                f"image slice ({sum(counts)} slices for {batch_size} images)"
            )
        sequences = join_tiles(output, counts, has_cls=False)
        sizes = torch.cat([torch.as_tensor(t).reshape(-1, 2) for t in inputs["tgt_sizes"]])
        patches = (sizes[:, 0] * sizes[:, 1]).to(output.device)
        per_tile, roles = output.shape[1], sequences.roles
        if roles is not None and _under(name, "vpm") and per_tile == int(patches.max()):
            # Slices are padded to the largest slice's patch count on the vision batch axis.
            real = torch.arange(per_tile, device=output.device)[None, :] < patches[:, None]
            start = 0
            for sample, count in enumerate(counts):
                keep = real[start : start + count].reshape(-1)
                roles[sample, : count * per_tile][~keep] = TokenRole.PAD
                start += count
        return sequences


def _under(name: str, prefix: str) -> bool:
    return any(part == prefix for part in name.split("."))


MINICPM = MiniCPMAdapter(max_images=1)
