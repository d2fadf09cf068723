"""Qwen2-VL layout: dynamic-resolution ViT with 2x2 patch merger -> Qwen2 decoder with M-RoPE.

Images keep their aspect ratio (resized to multiples of ``patch_size * merge_size``), so images of
different sizes give different numbers of ``<|image_pad|>`` tokens.  The vision tower has no CLS
position.  The processor always needs a real video processor, which needs torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import (
    PreTrainedTokenizerFast,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLTextConfig,
    Qwen2VLVideoProcessor,
    Qwen2VLVisionConfig,
)

from .tokenizer import build_tokenizer

MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
ROPE_THETA = 1_000_000.0

# ChatML as Qwen2-VL uses it; an image item becomes <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Qwen2VLSizes:
    vision_embed: int
    vision_depth: int
    vision_heads: int
    patch_size: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    min_pixels: int
    max_pixels: int


# base: the real Qwen2-VL vision tower (and pixel budget) with a 4-layer, 1024-wide decoder.
PRESETS: dict[str, Qwen2VLSizes] = {
    "tiny": Qwen2VLSizes(32, 2, 2, 8, 64, 128, 2, 2, 2, 16 * 16, 128 * 128),
    "small": Qwen2VLSizes(256, 4, 4, 14, 256, 688, 2, 4, 2, 56 * 56, 28 * 28 * 256),
    "base": Qwen2VLSizes(1280, 32, 16, 14, 1024, 2816, 4, 8, 2, 56 * 56, 28 * 28 * 1280),
}


def mrope_section(head_dim: int) -> list[int]:
    """Split ``head_dim / 2`` rotary frequencies into (t, h, w) like Qwen2-VL's [16, 24, 24]."""
    half = head_dim // 2
    temporal = half // 4
    height = (half - temporal) // 2
    return [temporal, height, half - temporal - height]


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    """The Qwen-VL chat tokens: shared by Qwen2-VL, Qwen2.5-VL and Qwen3-VL."""
    return build_tokenizer(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        named_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        other_special_tokens=["<|im_start|>"],
    )


def patch_settings(patch_size: int, min_pixels: int, max_pixels: int) -> dict[str, Any]:
    """Image and video processor settings; the pixel budget is `size` in transformers 5."""
    return {
        "patch_size": patch_size,
        "merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
    }


def build(
    preset: str,
) -> tuple[type[Qwen2VLForConditionalGeneration], Qwen2VLConfig, Qwen2VLProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = qwen_tokenizer()
    patches = patch_settings(s.patch_size, s.min_pixels, s.max_pixels)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**patches),
        video_processor=Qwen2VLVideoProcessor(**patches),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    vision = Qwen2VLVisionConfig(
        depth=s.vision_depth,
        embed_dim=s.vision_embed,
        hidden_size=s.text_hidden,  # the merger projects straight into the decoder width
        num_heads=s.vision_heads,
        patch_size=s.patch_size,
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
    )
    text = Qwen2VLTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_kv_heads,
        max_position_embeddings=32768,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": ROPE_THETA,
            "mrope_section": mrope_section(s.text_hidden // s.text_heads),
        },
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Qwen2VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.vision_start_token_id,
        vision_end_token_id=tokenizer.vision_end_token_id,
    )
    return Qwen2VLForConditionalGeneration, config, processor
