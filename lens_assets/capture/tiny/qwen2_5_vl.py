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
    Qwen2VLImageProcessor,
    Qwen2VLVideoProcessor,
)

from .qwen2_vl import (
    CHAT_TEMPLATE,
    MERGE_SIZE,
    TEMPORAL_PATCH_SIZE,
    mrope_section,
    patch_settings,
    qwen_tokenizer,
)

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
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    min_pixels: int
    max_pixels: int


# Parameters (vocab 307): tiny 0.18 M, small 6.4 M, base 0.71 B (the real Qwen2.5-VL-3B
# vision tower, 0.66 B, with a 4-layer, 1024-wide decoder).
PRESETS: dict[str, Qwen25VLSizes] = {
    "tiny": Qwen25VLSizes(32, 64, 2, 2, 8, 32, (1,), 64, 128, 2, 2, 2, 16 * 16, 128 * 128),
    "small": Qwen25VLSizes(
        256, 688, 4, 4, 14, 112, (1, 3), 256, 688, 2, 4, 2, 56 * 56, 28 * 28 * 256
    ),
    "base": Qwen25VLSizes(
        1280, 3420, 32, 16, 14, 112, (7, 15, 23, 31), 1024, 2816, 4, 8, 2, 56 * 56,
        28 * 28 * 1280,
    ),
}  # fmt: skip


def build(
    preset: str,
) -> tuple[type[Qwen2_5_VLForConditionalGeneration], Qwen2_5_VLConfig, Qwen2_5_VLProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = qwen_tokenizer()
    patches = patch_settings(s.patch_size, s.min_pixels, s.max_pixels)
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**patches),
        video_processor=Qwen2VLVideoProcessor(**patches),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    vision = Qwen2_5_VLVisionConfig(
        depth=s.vision_depth,
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate,
        num_heads=s.vision_heads,
        out_hidden_size=s.text_hidden,  # the merger projects straight into the decoder width
        patch_size=s.patch_size,
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        window_size=s.window_size,
        fullatt_block_indexes=list(s.full_attention_blocks),
    )
    text = Qwen2_5_VLTextConfig(
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
    config = Qwen2_5_VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.vision_start_token_id,
        vision_end_token_id=tokenizer.vision_end_token_id,
    )
    return Qwen2_5_VLForConditionalGeneration, config, processor
