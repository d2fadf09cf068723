"""InternVL (-hf format) layout: InternViT on dynamic tiles -> pixel shuffle + MLP -> Qwen2.

An image is cut into up to ``max_patches`` tower-sized tiles on the grid closest to its aspect
ratio, plus a downscaled thumbnail of the whole image last (when there is more than one tile);
every tile runs through the tower on its batch axis. The tower keeps a CLS position, which
``vision_feature_select_strategy="default"`` drops before the 0.5x pixel shuffle, so each tile
gives ``image_seq_length = (image_size / patch_size)**2 / 4`` `<IMG_CONTEXT>` tokens, between
`<img>` and `</img>`.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    InternVLVisionConfig,
    Qwen2Config,
)

from .blocks import (
    CHATML_SPECIALS,
    TextSizes,
    VisionSizes,
    chatml_template,
    text_config,
    vision_config,
)
from .tokenizer import build_tokenizer

DOWNSAMPLE_RATIO = 0.5  # pixel shuffle: 2x2 patches -> one token
FEATURE_STRATEGY = "default"  # drop CLS, as InternVL does

# ChatML as InternVL3 uses it; an image item becomes "<IMG_CONTEXT>\n", which the processor
# expands to <img> + tiles x image_seq_length <IMG_CONTEXT> + </img>.
CHAT_TEMPLATE = chatml_template("{{ '<IMG_CONTEXT>\n' }}")


@dataclass(frozen=True)
class InternVLSizes:
    vision: VisionSizes  # image_size: one tile, square
    max_tiles: int
    text: TextSizes


# Parameters (vocab 307): tiny 0.15 M, small 5.2 M, base 0.35 B (the real InternViT-300M tower
# of InternVL3-1B, 0.30 B, with a 4-layer, 1024-wide Qwen2).
PRESETS: dict[str, InternVLSizes] = {
    "tiny": InternVLSizes(VisionSizes(32, 128, 2, 2, 32, 8), 6, TextSizes(64, 128, 2, 2, 2)),
    "small": InternVLSizes(VisionSizes(256, 1024, 4, 4, 224, 14), 6, TextSizes(256, 688, 2, 4, 2)),
    "base": InternVLSizes(
        VisionSizes(1024, 4096, 24, 16, 448, 14), 12, TextSizes(1024, 2816, 4, 8, 2)
    ),
}


def build(
    preset: str,
) -> tuple[type[InternVLForConditionalGeneration], InternVLConfig, InternVLProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_tokenizer(
        **CHATML_SPECIALS,
        named_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        other_special_tokens=["<|im_start|>"],
    )
    tokens_per_tile = int(s.vision.grid**2 * DOWNSAMPLE_RATIO**2)
    side, patch = s.vision.image_size, s.vision.patch_size
    tile = {"height": side, "width": side}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=tile, crop_to_patches=True, min_patches=1, max_patches=s.max_tiles
        ),
        video_processor=InternVLVideoProcessor(size=tile),
        tokenizer=tokenizer,
        image_seq_length=tokens_per_tile,
        chat_template=CHAT_TEMPLATE,
    )
    # InternViT takes its image and patch sizes as (height, width).
    vision = vision_config(
        InternVLVisionConfig, s.vision, image_size=[side, side], patch_size=[patch, patch]
    )
    text = text_config(
        Qwen2Config,
        tokenizer,
        s.text,
        max_positions=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=processor.image_token_id,
        image_seq_length=tokens_per_tile,
        downsample_ratio=DOWNSAMPLE_RATIO,
        vision_feature_layer=-1,
        vision_feature_select_strategy=FEATURE_STRATEGY,
    )
    return InternVLForConditionalGeneration, config, processor
