"""Qwen2.5-VL layout: windowed dynamic-resolution ViT with 2x2 patch merger -> Qwen2 decoder.

As Qwen2-VL (packed patches, no CLS, `<|image_pad|>` tokens, M-RoPE), but the vision blocks
attend within windows of ``window_size`` pixels except at ``fullatt_block_indexes``, and the
tower reorders each image's merge blocks window by window before its blocks run (the merger's
output is put back in raster order outside the merger module). The tiny window covers 2x2
merged tokens, so every test image spans several windows and the reordering is exercised.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2_5_VLTextConfig,
    Qwen2_5_VLVisionConfig,
    Qwen2VLVideoProcessor,
)

from .blocks import TextSizes
from .qwen2_vl import qwen_processor, qwen_text, qwen_token_ids, qwen_vision

ROPE_THETA = 1_000_000.0


@dataclass(frozen=True)
class Qwen25VLSizes:
    vision_hidden: int
    vision_intermediate: int
    vision_depth: int
    vision_heads: int
    patch_size: int
    window_size: int  # pixels; windows of window_size / patch_size / merge_size merged tokens
    full_attention_blocks: tuple[int, ...]
    text: TextSizes
    min_pixels: int
    max_pixels: int


# Parameters (vocab 307): tiny 0.18 M, small 6.4 M, base 0.71 B (the real Qwen2.5-VL-3B
# vision tower, 0.66 B, with a 4-layer, 1024-wide decoder).
PRESETS: dict[str, Qwen25VLSizes] = {
    "tiny": Qwen25VLSizes(
        32, 64, 2, 2, 8, 32, (1,), TextSizes(64, 128, 2, 2, 2), 16 * 16, 128 * 128
    ),
    "small": Qwen25VLSizes(
        256, 688, 4, 4, 14, 112, (1, 3), TextSizes(256, 688, 2, 4, 2), 56 * 56, 28 * 28 * 256
    ),
    "base": Qwen25VLSizes(
        1280, 3420, 32, 16, 14, 112, (7, 15, 23, 31), TextSizes(1024, 2816, 4, 8, 2), 56 * 56,
        28 * 28 * 1280,
    ),
}  # fmt: skip


def build(
    preset: str,
) -> tuple[type[Qwen2_5_VLForConditionalGeneration], Qwen2_5_VLConfig, Qwen2_5_VLProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    processor = qwen_processor(
        Qwen2_5_VLProcessor, Qwen2VLVideoProcessor, s.patch_size, s.min_pixels, s.max_pixels
    )
    tokenizer = processor.tokenizer
    vision = qwen_vision(
        Qwen2_5_VLVisionConfig,
        s.vision_depth,
        s.vision_heads,
        s.patch_size,
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate,
        out_hidden_size=s.text.hidden,  # the merger projects straight into the decoder width
        window_size=s.window_size,
        fullatt_block_indexes=list(s.full_attention_blocks),
    )
    config = Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=qwen_text(Qwen2_5_VLTextConfig, tokenizer, s.text, ROPE_THETA),
        **qwen_token_ids(tokenizer),
    )
    return Qwen2_5_VLForConditionalGeneration, config, processor
