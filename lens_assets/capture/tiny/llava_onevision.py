"""LLaVA-OneVision layout: SigLIP vision tower on anyres tiles -> MLP projector -> Qwen2 decoder.

Tiling works as in LLaVA-NeXT (a base tile of the whole image first, then the grid tiles of the
best "pinpoint" resolution, all on the tower's batch axis), over a 6x6 choice of grids; the LLM
sees the grid tiles' features unpadded, with an ``image_newline`` vector after each row, and
bilinearly shrunk when they exceed ``anyres_max_9`` (nine tiles' worth). SigLIP has no CLS, so
every tower position is a feature (``vision_feature_select_strategy="full"``). A sample with
several images gets one untiled tile per image. The processor needs a real video processor,
which needs torchvision.
"""

from __future__ import annotations

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2Config,
    SiglipVisionConfig,
)

from .blocks import (
    CHATML_SPECIALS,
    SIGLIP_NORM,
    TextSizes,
    TowerSizes,
    VisionSizes,
    chatml_template,
    text_config,
    vision_config,
)
from .tokenizer import build_tokenizer

FEATURE_STRATEGY = "full"  # SigLIP has no CLS position to drop
FEATURE_LAYER = -1
ASPECT_RATIO = "anyres_max_9"
GRID_SIDE = 6  # tiles per side of the largest pinpoint, as in llava-onevision-*-hf

# ChatML as llava-onevision-qwen2-*-hf uses it; an image item becomes "<image>\n".
CHAT_TEMPLATE = chatml_template("<image>\n", "<video>\n")


def pinpoints(tile: int) -> list[list[int]]:
    """Every grid of 1..6 by 1..6 tiles, in pixels of ``tile`` (row-major, as the real one)."""
    sides = range(1, GRID_SIDE + 1)
    return [[tile * rows, tile * cols] for rows in sides for cols in sides]


# Parameters: tiny 0.15 M (0.6 MB on disk), small 6.6 M, base 460 M (the real SigLIP
# so400m/14-384 tower of llava-onevision-qwen2-0.5b-ov, 398 M in 26 layers, with a 4-layer,
# 896-wide Qwen2).
PRESETS: dict[str, TowerSizes] = {
    "tiny": TowerSizes(VisionSizes(32, 128, 2, 2, 32, 8), TextSizes(64, 128, 2, 4, 2)),
    "small": TowerSizes(VisionSizes(256, 1024, 6, 4, 112, 14), TextSizes(256, 688, 2, 4, 2)),
    "base": TowerSizes(VisionSizes(1152, 4304, 26, 16, 384, 14), TextSizes(896, 4864, 4, 14, 2)),
}


def build(
    preset: str,
) -> tuple[
    type[LlavaOnevisionForConditionalGeneration], LlavaOnevisionConfig, LlavaOnevisionProcessor
]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    grid = pinpoints(s.vision.image_size)
    tokenizer = build_tokenizer(
        **CHATML_SPECIALS,
        named_tokens={"image_token": "<image>", "video_token": "<video>"},
        other_special_tokens=["<|im_start|>"],
    )
    frame = {
        "size": {"height": s.vision.image_size, "width": s.vision.image_size},
        "image_mean": SIGLIP_NORM,
        "image_std": SIGLIP_NORM,
    }
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(**frame, image_grid_pinpoints=grid),
        video_processor=LlavaOnevisionVideoProcessor(**frame),
        tokenizer=tokenizer,
        num_image_tokens=s.vision.grid**2,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        vision_aspect_ratio=ASPECT_RATIO,
        chat_template=CHAT_TEMPLATE,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision_config(SiglipVisionConfig, s.vision, vision_use_head=False),
        text_config=text_config(Qwen2Config, tokenizer, s.text, max_positions=32768),
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        image_grid_pinpoints=grid,
        vision_aspect_ratio=ASPECT_RATIO,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        vision_feature_layer=FEATURE_LAYER,
    )
    return LlavaOnevisionForConditionalGeneration, config, processor
