"""A tiny LLaVA-like VLM shipped as remote code: a patch embedding and two blocks as the vision
tower, an MLP projector, and a causal decoder whose `<image>` tokens take the projected
patches. Written for LensFlow's tests; loads through AutoModelForImageTextToText's auto_map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_lens_tiny import LensTinyRemoteConfig
from .lens_tiny_layers import Block, Decoder, PatchEmbedding

RUN_MARKER_DIR = ""
if RUN_MARKER_DIR:
    (Path(RUN_MARKER_DIR) / "modeling_lens_tiny.ran").touch()


class VisionTower(nn.Module):
    def __init__(self, config: LensTinyRemoteConfig) -> None:
        super().__init__()
        dim = config.vision_hidden_size
        self.patch_embed = PatchEmbedding(config.image_size, config.patch_size, dim, False)
        self.blocks = nn.ModuleList(
            Block(dim, config.vision_heads, causal=False) for _ in range(config.vision_layers)
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(pixel_values)
        for block in self.blocks:
            x = block(x)
        return x


class LensTinyRemoteForConditionalGeneration(PreTrainedModel):
    config_class = LensTinyRemoteConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"

    def __init__(self, config: LensTinyRemoteConfig) -> None:
        super().__init__(config)
        self.vision_tower = VisionTower(config)
        self.multi_modal_projector = nn.Sequential(
            nn.Linear(config.vision_hidden_size, config.hidden_size),
            nn.GELU(),
            nn.Linear(config.hidden_size, config.hidden_size),
        )
        self.language_model = Decoder(
            config.vocab_size,
            config.hidden_size,
            config.num_hidden_layers,
            config.num_attention_heads,
        )
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        embeds = self.language_model.embed_tokens(input_ids)
        if pixel_values is not None:
            features = self.multi_modal_projector(self.vision_tower(pixel_values))
            slots = input_ids == self.config.image_token_id
            if int(slots.sum()) != features.shape[0] * features.shape[1]:
                raise ValueError(
                    f"{int(slots.sum())} image tokens for {features.shape[0]} images of "
                    f"{features.shape[1]} patches"
                )
            embeds = embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))
        hidden = self.language_model(embeds, attention_mask)
        return CausalLMOutputWithPast(logits=self.lm_head(hidden))
