"""CLIP dual encoder: ViT image tower and causal text tower, both projected into a shared space.

The vision tower has a CLS position.  The text tower pools at the first ``eos_token_id``, so the
tokenizer appends EOS to every text (and EOS must not have id 2, CLIP's legacy marker).
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTextConfig,
    CLIPVisionConfig,
)

from .blocks import TextSizes, VisionSizes, center_crop, text_config, vision_config
from .tokenizer import build_tokenizer

MAX_TEXT_POSITIONS = 77  # as in every OpenAI CLIP


@dataclass(frozen=True)
class ClipSizes:
    vision: VisionSizes
    text: TextSizes
    projection_dim: int


# base: the real ViT-B/32 tower of openai/clip-vit-base-patch32 with a 4-layer text tower.
PRESETS: dict[str, ClipSizes] = {
    "tiny": ClipSizes(VisionSizes(32, 128, 2, 2, 32, 8), TextSizes(32, 128, 2, 2), 16),
    "small": ClipSizes(VisionSizes(256, 1024, 6, 4, 112, 14), TextSizes(256, 1024, 4, 4), 128),
    "base": ClipSizes(VisionSizes(768, 3072, 12, 12, 224, 32), TextSizes(512, 2048, 4, 8), 512),
}


def build(preset: str) -> tuple[type[CLIPModel], CLIPConfig, CLIPProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_tokenizer(
        bos="<|startoftext|>",
        eos="<|endoftext|>",
        pad="<pad>",
        unk="<unk>",
        add_bos=True,
        add_eos=True,
        model_max_length=MAX_TEXT_POSITIONS,
    )
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(**center_crop(s.vision.image_size)),
        tokenizer=tokenizer,
    )
    projection = {"projection_dim": s.projection_dim}
    text = text_config(
        CLIPTextConfig, tokenizer, s.text, max_positions=MAX_TEXT_POSITIONS, **projection
    )
    vision = vision_config(CLIPVisionConfig, s.vision, **projection)
    config = CLIPConfig(text_config=text, vision_config=vision, **projection)
    return CLIPModel, config, processor
