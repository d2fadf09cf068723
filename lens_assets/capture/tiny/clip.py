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

from .tokenizer import build_tokenizer

MAX_TEXT_POSITIONS = 77  # as in every OpenAI CLIP


@dataclass(frozen=True)
class ClipSizes:
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    text_hidden: int
    text_layers: int
    text_heads: int
    projection_dim: int


# base: the real ViT-B/32 tower of openai/clip-vit-base-patch32 with a 4-layer text tower.
PRESETS: dict[str, ClipSizes] = {
    "tiny": ClipSizes(32, 2, 2, 32, 8, 32, 2, 2, 16),
    "small": ClipSizes(256, 6, 4, 112, 14, 256, 4, 4, 128),
    "base": ClipSizes(768, 12, 12, 224, 32, 512, 4, 8, 512),
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
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": s.image_size},
            crop_size={"height": s.image_size, "width": s.image_size},
        ),
        tokenizer=tokenizer,
    )
    text = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=4 * s.text_hidden,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        max_position_embeddings=MAX_TEXT_POSITIONS,
        projection_dim=s.projection_dim,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = CLIPVisionConfig(
        hidden_size=s.vision_hidden,
        intermediate_size=4 * s.vision_hidden,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=s.image_size,
        patch_size=s.patch_size,
        projection_dim=s.projection_dim,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=s.projection_dim)
    return CLIPModel, config, processor
