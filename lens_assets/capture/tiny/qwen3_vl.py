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
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
    Qwen3VLTextConfig,
    Qwen3VLVideoProcessor,
    Qwen3VLVisionConfig,
)

from .blocks import TextSizes
from .qwen2_vl import qwen_processor, qwen_text, qwen_token_ids, qwen_vision

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
    text: TextSizes
    min_pixels: int
    max_pixels: int


# Parameters (vocab 307): tiny 0.20 M, small 9.2 M, base 0.44 B (the real Qwen3-VL-2B vision
# tower and its three DeepStack mergers, 0.39 B, with a 4-layer, 1024-wide decoder).
PRESETS: dict[str, Qwen3VLSizes] = {
    "tiny": Qwen3VLSizes(
        32, 64, 2, 2, 8, 64, (0,), TextSizes(64, 128, 2, 2, 2, 32), 16 * 16, 128 * 128
    ),
    "small": Qwen3VLSizes(
        256, 1024, 4, 4, 16, 256, (1, 2), TextSizes(256, 688, 2, 4, 2, 64), 64 * 64,
        32 * 32 * 256,
    ),
    "base": Qwen3VLSizes(
        1024, 4096, 24, 16, 16, 2304, (5, 11, 17), TextSizes(1024, 3072, 4, 8, 4, 128),
        64 * 64, 32 * 32 * 1024,
    ),
}  # fmt: skip


def build(
    preset: str,
) -> tuple[type[Qwen3VLForConditionalGeneration], Qwen3VLConfig, Qwen3VLProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    processor = qwen_processor(
        Qwen3VLProcessor, Qwen3VLVideoProcessor, s.patch_size, s.min_pixels, s.max_pixels
    )
    tokenizer = processor.tokenizer
    vision = qwen_vision(
        Qwen3VLVisionConfig,
        s.vision_depth,
        s.vision_heads,
        s.patch_size,
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate,
        out_hidden_size=s.text.hidden,  # every merger projects straight into the decoder width
        num_position_embeddings=s.position_embeddings,
        deepstack_visual_indexes=list(s.deepstack),
    )
    text = qwen_text(Qwen3VLTextConfig, tokenizer, s.text, ROPE_THETA, mrope_interleaved=True)
    config = Qwen3VLConfig(vision_config=vision, text_config=text, **qwen_token_ids(tokenizer))
    return Qwen3VLForConditionalGeneration, config, processor
