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

from dataclasses import dataclass

from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessor,
    LlavaOnevisionProcessor,
    LlavaOnevisionVideoProcessor,
    Qwen2Config,
    SiglipVisionConfig,
)

from .tokenizer import build_tokenizer

FEATURE_STRATEGY = "full"  # SigLIP has no CLS position to drop
FEATURE_LAYER = -1
ASPECT_RATIO = "anyres_max_9"
GRID_SIDE = 6  # tiles per side of the largest pinpoint, as in llava-onevision-*-hf
SIGLIP_NORM = [0.5, 0.5, 0.5]  # SigLIP's pixel mean and std

# ChatML as llava-onevision-qwen2-*-hf uses it; an image item becomes "<image>\n".
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'video' %}<video>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def pinpoints(tile: int) -> list[list[int]]:
    """Every grid of 1..6 by 1..6 tiles, in pixels of ``tile`` (row-major, as the real one)."""
    sides = range(1, GRID_SIDE + 1)
    return [[tile * rows, tile * cols] for rows in sides for cols in sides]


@dataclass(frozen=True)
class LlavaOnevisionSizes:
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int


# Parameters: tiny 0.15 M (0.6 MB on disk), small 6.6 M, base 460 M (the real SigLIP
# so400m/14-384 tower of llava-onevision-qwen2-0.5b-ov, 398 M in 26 layers, with a 4-layer,
# 896-wide Qwen2).
PRESETS: dict[str, LlavaOnevisionSizes] = {
    "tiny": LlavaOnevisionSizes(32, 128, 2, 2, 32, 8, 64, 128, 2, 4, 2),
    "small": LlavaOnevisionSizes(256, 1024, 6, 4, 112, 14, 256, 688, 2, 4, 2),
    "base": LlavaOnevisionSizes(1152, 4304, 26, 16, 384, 14, 896, 4864, 4, 14, 2),
}


def build(
    preset: str,
) -> tuple[
    type[LlavaOnevisionForConditionalGeneration], LlavaOnevisionConfig, LlavaOnevisionProcessor
]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    grid = pinpoints(s.image_size)
    tokenizer = build_tokenizer(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        named_tokens={"image_token": "<image>", "video_token": "<video>"},
        other_special_tokens=["<|im_start|>"],
    )
    frame = {"height": s.image_size, "width": s.image_size}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(
            size=frame,
            image_grid_pinpoints=grid,
            image_mean=SIGLIP_NORM,
            image_std=SIGLIP_NORM,
        ),
        video_processor=LlavaOnevisionVideoProcessor(
            size=frame, image_mean=SIGLIP_NORM, image_std=SIGLIP_NORM
        ),
        tokenizer=tokenizer,
        num_image_tokens=(s.image_size // s.patch_size) ** 2,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        vision_aspect_ratio=ASPECT_RATIO,
        chat_template=CHAT_TEMPLATE,
    )
    vision = SiglipVisionConfig(
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=s.image_size,
        patch_size=s.patch_size,
        vision_use_head=False,
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_kv_heads,
        max_position_embeddings=32768,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.image_token_id,
        video_token_index=tokenizer.video_token_id,
        image_grid_pinpoints=grid,
        vision_aspect_ratio=ASPECT_RATIO,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        vision_feature_layer=FEATURE_LAYER,
    )
    return LlavaOnevisionForConditionalGeneration, config, processor
