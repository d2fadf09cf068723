"""A tiny model with CogVLM's public interface, written for LensFlow's tests.

What it shares with CogVLM (per its public modeling code): the module names (`model.vision`
with `patch_embedding`, `transformer.layers`, `linear_proj` and `boi`/`eoi`; `model.layers`),
`build_conversation_input_ids(tokenizer, query=, history=, images=)` returning 1-D
`input_ids` / `token_type_ids` / `attention_mask` and `images`, vision positions as pad tokens
of token type 1 (patches plus `boi` and `eoi`), and `forward(input_ids, images=[[...], ...],
token_type_ids=, attention_mask=)`. Everything else is deliberately small.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_lens_cogvlm import LensCogVLMConfig
from .lens_tiny_layers import Block, PatchEmbedding

RUN_MARKER_DIR = ""
if RUN_MARKER_DIR:
    (Path(RUN_MARKER_DIR) / "modeling_lens_cogvlm.ran").touch()

LANGUAGE_TOKEN_TYPE = 0
VISION_TOKEN_TYPE = 1
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


class Transformer(nn.Module):
    def __init__(self, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(dim, heads, causal=False) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class VisionModel(nn.Module):
    """Patches with a class token -> blocks -> class token dropped -> projection -> boi/eoi."""

    def __init__(self, config: LensCogVLMConfig) -> None:
        super().__init__()
        vision = config.vision_config
        dim = vision["hidden_size"]
        self.patch_embedding = PatchEmbedding(
            vision["image_size"], vision["patch_size"], dim, with_cls=True
        )
        self.transformer = Transformer(dim, vision["num_heads"], vision["num_hidden_layers"])
        self.linear_proj = nn.Sequential(
            nn.Linear(dim, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )
        self.boi = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.eoi = nn.Parameter(torch.zeros(1, 1, config.hidden_size))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.transformer(self.patch_embedding(images))[:, 1:]
        x = self.linear_proj(x)
        return torch.cat([self.boi.expand(len(x), -1, -1), x, self.eoi.expand(len(x), -1, -1)], 1)


class LensCogVLMModel(nn.Module):
    def __init__(self, config: LensCogVLMConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            Block(config.hidden_size, config.num_attention_heads, causal=True)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = nn.LayerNorm(config.hidden_size)
        self.vision = VisionModel(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        images: list[list[torch.Tensor]] | None,
        token_type_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        embeds = self.embed_tokens(input_ids)
        flat = [image for sample in images or [] for image in sample]
        if flat:
            features = self.vision(torch.stack(flat))
            slots = token_type_ids == VISION_TOKEN_TYPE
            if int(slots.sum()) != features.shape[0] * features.shape[1]:
                raise ValueError("vision positions and image features do not match")
            embeds = embeds.index_put([slots], features.reshape(-1, features.shape[-1]))
        for layer in self.layers:
            embeds = layer(embeds, attention_mask)
        return self.norm(embeds)


def _prompt(template_version: str, history: list[tuple[str, str]], query: str) -> str:
    if template_version == "base":
        return query
    if template_version == "vqa":
        return f"{query} Short answer:"
    turns = "".join(f"Question: {q} Answer: {a}\n" for q, a in history)
    return f"{turns}Question: {query} Answer:"


def _image_tensor(image: Image.Image, size: int) -> torch.Tensor:
    resized = image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(resized, dtype=np.float32) / 255.0
    array = (array - np.asarray(IMAGE_MEAN, np.float32)) / np.asarray(IMAGE_STD, np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class LensCogVLMForCausalLM(PreTrainedModel):
    config_class = LensCogVLMConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: LensCogVLMConfig) -> None:
        super().__init__(config)
        self.model = LensCogVLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        images: list[list[torch.Tensor]] | None = None,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if token_type_ids is None:
            token_type_ids = torch.full_like(input_ids, LANGUAGE_TOKEN_TYPE)
        hidden = self.model(input_ids, images, token_type_ids, attention_mask)
        return CausalLMOutputWithPast(logits=self.lm_head(hidden))

    def build_conversation_input_ids(
        self,
        tokenizer: Any,
        *,
        query: str,
        history: list[tuple[str, str]] | None = None,
        images: list[Image.Image] | None = None,
        template_version: str | None = None,
    ) -> dict[str, Any]:
        vision = self.config.vision_config
        text = _prompt(template_version or self.config.template_version, history or [], query)
        input_ids = [tokenizer.bos_token_id]
        token_type_ids = [LANGUAGE_TOKEN_TYPE]
        tensors = []
        if images:
            if len(images) != 1:
                raise ValueError("one image per conversation")
            tensors = [_image_tensor(images[0], vision["image_size"])]
            positions = (vision["image_size"] // vision["patch_size"]) ** 2 + 2
            input_ids += [tokenizer.pad_token_id] * positions
            token_type_ids += [VISION_TOKEN_TYPE] * positions
        text_ids = tokenizer.encode(text, add_special_tokens=False)
        input_ids += text_ids
        token_type_ids += [LANGUAGE_TOKEN_TYPE] * len(text_ids)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "token_type_ids": torch.tensor(token_type_ids, dtype=torch.long),
            "attention_mask": torch.ones(len(input_ids), dtype=torch.long),
            "images": tensors,
        }
