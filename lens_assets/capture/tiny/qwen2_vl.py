"""Qwen2-VL layout: dynamic-resolution ViT with 2x2 patch merger -> Qwen2 decoder with M-RoPE.

Images keep their aspect ratio (resized to multiples of ``patch_size * merge_size``), so images of
different sizes give different numbers of ``<|image_pad|>`` tokens.  The vision tower has no CLS
position.  The processor always needs a real video processor, which needs torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from transformers import (
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLTextConfig,
    Qwen2VLVideoProcessor,
    Qwen2VLVisionConfig,
)
from transformers.video_processing_utils import BaseVideoProcessor

from .blocks import CHATML_SPECIALS, TextSizes, chatml_template, text_config
from .tokenizer import build_tokenizer

C = TypeVar("C", bound=PreTrainedConfig)
P = TypeVar("P", bound=ProcessorMixin)

MERGE_SIZE = 2
TEMPORAL_PATCH_SIZE = 2
ROPE_THETA = 1_000_000.0

# ChatML as Qwen2-VL uses it; an image item becomes <|vision_start|><|image_pad|><|vision_end|>.
CHAT_TEMPLATE = chatml_template(
    "<|vision_start|><|image_pad|><|vision_end|>", "<|vision_start|><|video_pad|><|vision_end|>"
)


@dataclass(frozen=True)
class Qwen2VLSizes:
    vision_embed: int
    vision_depth: int
    vision_heads: int
    patch_size: int
    text: TextSizes
    min_pixels: int
    max_pixels: int


# base: the real Qwen2-VL vision tower (and pixel budget) with a 4-layer, 1024-wide decoder.
PRESETS: dict[str, Qwen2VLSizes] = {
    "tiny": Qwen2VLSizes(32, 2, 2, 8, TextSizes(64, 128, 2, 2, 2), 16 * 16, 128 * 128),
    "small": Qwen2VLSizes(256, 4, 4, 14, TextSizes(256, 688, 2, 4, 2), 56 * 56, 28 * 28 * 256),
    "base": Qwen2VLSizes(1280, 32, 16, 14, TextSizes(1024, 2816, 4, 8, 2), 56 * 56, 28 * 28 * 1280),
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
        **CHATML_SPECIALS,
        named_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        other_special_tokens=["<|im_start|>"],
    )


def qwen_processor(
    processor_class: type[P],
    video_class: type[BaseVideoProcessor],
    patch_size: int,
    min_pixels: int,
    max_pixels: int,
) -> P:
    """A Qwen-VL processor whose image and video processors patch alike; the pixel budget is
    `size` in transformers 5."""
    patches = {
        "patch_size": patch_size,
        "merge_size": MERGE_SIZE,
        "temporal_patch_size": TEMPORAL_PATCH_SIZE,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
    }
    return processor_class(
        image_processor=Qwen2VLImageProcessor(**patches),
        video_processor=video_class(**patches),
        tokenizer=qwen_tokenizer(),
        chat_template=CHAT_TEMPLATE,
    )


def qwen_vision(config_class: type[C], depth: int, heads: int, patch_size: int, **fields: Any) -> C:
    """A Qwen-VL vision tower merging 2x2 patches (and 2 frames) into one LLM token."""
    return config_class(
        depth=depth,
        num_heads=heads,
        patch_size=patch_size,
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        **fields,
    )


def qwen_text(
    config_class: type[C],
    tokenizer: PreTrainedTokenizerFast,
    sizes: TextSizes,
    rope_theta: float,
    **rope: Any,
) -> C:
    """A Qwen decoder with M-RoPE: its rotary frequencies split over (time, height, width)."""
    head_dim = sizes.head_dim or sizes.hidden // sizes.heads
    rope_parameters = {
        "rope_type": "default",
        "rope_theta": rope_theta,
        "mrope_section": mrope_section(head_dim),
        **rope,
    }
    return text_config(
        config_class, tokenizer, sizes, max_positions=32768, rope_parameters=rope_parameters
    )


def qwen_token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    """The image, video and frame token ids a Qwen-VL model config names."""
    return {
        "image_token_id": tokenizer.image_token_id,
        "video_token_id": tokenizer.video_token_id,
        "vision_start_token_id": tokenizer.vision_start_token_id,
        "vision_end_token_id": tokenizer.vision_end_token_id,
    }


def build(
    preset: str,
) -> tuple[type[Qwen2VLForConditionalGeneration], Qwen2VLConfig, Qwen2VLProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    processor = qwen_processor(
        Qwen2VLProcessor, Qwen2VLVideoProcessor, s.patch_size, s.min_pixels, s.max_pixels
    )
    tokenizer = processor.tokenizer
    vision = qwen_vision(
        Qwen2VLVisionConfig,
        s.vision_depth,
        s.vision_heads,
        s.patch_size,
        embed_dim=s.vision_embed,
        hidden_size=s.text.hidden,  # the merger projects straight into the decoder width
    )
    config = Qwen2VLConfig(
        vision_config=vision,
        text_config=qwen_text(Qwen2VLTextConfig, tokenizer, s.text, ROPE_THETA),
        **qwen_token_ids(tokenizer),
    )
    return Qwen2VLForConditionalGeneration, config, processor
