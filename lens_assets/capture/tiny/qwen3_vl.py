"""Qwen3-VL layout: dynamic-resolution ViT with learned (interpolated) position embeddings,
2x2 patch merger and DeepStack mergers -> Qwen3 decoder with interleaved M-RoPE.

Packed patches and `<|image_pad|>` tokens as in Qwen2-VL. DeepStack: the blocks listed in
``deepstack_visual_indexes`` each feed their own merger (``model.visual.deepstack_merger_list.N``)
whose tokens are added to the image positions of the residual stream right after LLM decoder
layer N (outside that layer's module). The processor returns ``mm_token_type_ids``, which the
model needs for its 3-D positions.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    Qwen2VLImageProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLTextConfig,
    Qwen3VLVideoProcessor,
    Qwen3VLVisionConfig,
)

from .qwen2_vl import (
    CHAT_TEMPLATE,
    MERGE_SIZE,
    TEMPORAL_PATCH_SIZE,
    mrope_section,
    patch_settings,
    qwen_tokenizer,
)

ROPE_THETA = 5_000_000.0


@dataclass(frozen=True)
class Qwen3VLSizes:
    vision_hidden: int
    vision_intermediate: int
    vision_depth: int
    vision_heads: int
    patch_size: int
    position_embeddings: int  # a square grid of learned positions, interpolated per image
    deepstack: tuple[int, ...]  # vision blocks whose features go into the first LLM layers
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    head_dim: int
    min_pixels: int
    max_pixels: int


# Parameters (vocab 307): tiny 0.20 M, small 9.2 M, base 0.44 B (the real Qwen3-VL-2B vision
# tower and its three DeepStack mergers, 0.39 B, with a 4-layer, 1024-wide decoder).
PRESETS: dict[str, Qwen3VLSizes] = {
    "tiny": Qwen3VLSizes(32, 64, 2, 2, 8, 64, (0,), 64, 128, 2, 2, 2, 32, 16 * 16, 128 * 128),
    "small": Qwen3VLSizes(
        256, 1024, 4, 4, 16, 256, (1, 2), 256, 688, 2, 4, 2, 64, 64 * 64, 32 * 32 * 256
    ),
    "base": Qwen3VLSizes(
        1024, 4096, 24, 16, 16, 2304, (5, 11, 17), 1024, 3072, 4, 8, 4, 128, 64 * 64,
        32 * 32 * 1024,
    ),
}  # fmt: skip


def build(
    preset: str,
) -> tuple[type[Qwen3VLForConditionalGeneration], Qwen3VLConfig, Qwen3VLProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = qwen_tokenizer()
    patches = patch_settings(s.patch_size, s.min_pixels, s.max_pixels)
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(**patches),
        video_processor=Qwen3VLVideoProcessor(**patches),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    vision = Qwen3VLVisionConfig(
        depth=s.vision_depth,
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate,
        num_heads=s.vision_heads,
        out_hidden_size=s.text_hidden,  # every merger projects straight into the decoder width
        patch_size=s.patch_size,
        spatial_merge_size=MERGE_SIZE,
        temporal_patch_size=TEMPORAL_PATCH_SIZE,
        num_position_embeddings=s.position_embeddings,
        deepstack_visual_indexes=list(s.deepstack),
    )
    text = Qwen3VLTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_kv_heads,
        head_dim=s.head_dim,
        max_position_embeddings=32768,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": ROPE_THETA,
            "mrope_section": mrope_section(s.head_dim),
            "mrope_interleaved": True,
        },
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = Qwen3VLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        vision_start_token_id=tokenizer.vision_start_token_id,
        vision_end_token_id=tokenizer.vision_end_token_id,
    )
    return Qwen3VLForConditionalGeneration, config, processor
