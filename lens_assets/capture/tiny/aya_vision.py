"""Aya-Vision layout: SigLIP tower on dynamic tiles -> pixel shuffle + SwiGLU MLP -> Cohere2.

Tiling is InternVL's (GotOcr2 image processor: up to ``max_patches`` tiles on the grid closest
to the aspect ratio, then a global thumbnail last), and every tile runs through the tower on its
batch axis. The tower has no CLS position. The projector's output keeps the tile's spatial
layout, ``(tiles, h, w, dim)`` channel-last, and each tile becomes ``h * w`` `<|IMG_PATCH|>`
tokens after a ``TILE_k`` (or, for the thumbnail, ``TILE_GLOBAL``) marker, all between
`<|START_OF_IMG|>` and `<|END_OF_IMG|>`.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    AyaVisionConfig,
    AyaVisionForConditionalGeneration,
    AyaVisionProcessor,
    Cohere2Config,
    GotOcr2ImageProcessor,
    SiglipVisionConfig,
)

from .blocks import (
    SIGLIP_NORM,
    TextSizes,
    VisionSizes,
    sliding_then_full,
    text_config,
    vision_config,
)
from .tokenizer import build_tokenizer

DOWNSAMPLE_FACTOR = 2  # pixel shuffle: 2x2 patches -> one token
IMAGE_TOKEN = "<image>"  # the placeholder the processor expands
PATCH_TOKEN = "<|IMG_PATCH|>"  # the image token the LLM sees (config.image_token_id)
MARKERS = ("<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_LINE_BREAK|>", "TILE_GLOBAL")
TURN_TOKENS = (
    "<|START_OF_TURN_TOKEN|>",
    "<|END_OF_TURN_TOKEN|>",
    "<|USER_TOKEN|>",
    "<|CHATBOT_TOKEN|>",
    "<|SYSTEM_TOKEN|>",
)

# Cohere's turn tokens as in aya-vision-8b; an image item becomes "<image>".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|START_OF_TURN_TOKEN|>"
    "{% if message['role'] == 'user' %}<|USER_TOKEN|>"
    "{% elif message['role'] == 'system' %}<|SYSTEM_TOKEN|>"
    "{% else %}<|CHATBOT_TOKEN|>{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|END_OF_TURN_TOKEN|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{% endif %}"
)


@dataclass(frozen=True)
class AyaVisionSizes:
    vision: VisionSizes  # image_size: one tile, square
    max_tiles: int
    alignment_intermediate: int  # SwiGLU width of the projector (halved by the gate)
    text: TextSizes


# Parameters (vocab ~320): tiny 0.15 M, small 6.2 M, base 0.49 B (the real SigLIP-so400m tower
# of aya-vision-8b, 0.41 B, with a 4-layer, 1024-wide Cohere2 and a narrower projector).
PRESETS: dict[str, AyaVisionSizes] = {
    "tiny": AyaVisionSizes(
        VisionSizes(32, 64, 2, 2, 32, 8), 6, 128, TextSizes(64, 128, 2, 2, 2, 32)
    ),
    "small": AyaVisionSizes(
        VisionSizes(256, 1024, 4, 4, 224, 14), 6, 1024, TextSizes(256, 688, 2, 4, 4, 64)
    ),
    "base": AyaVisionSizes(
        VisionSizes(1152, 4304, 27, 16, 364, 14), 12, 4096, TextSizes(1024, 2816, 4, 8, 8, 128)
    ),
}


def build(
    preset: str,
) -> tuple[type[AyaVisionForConditionalGeneration], AyaVisionConfig, AyaVisionProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    # Crops are announced as TILE_1 .. TILE_<max_tiles>; special tokens keep each marker whole.
    tile_markers = [f"TILE_{index}" for index in range(1, s.max_tiles + 1)]
    tokenizer = build_tokenizer(
        bos="<BOS_TOKEN>",
        eos="<|END_OF_TURN_TOKEN|>",
        pad="<PAD>",
        unk="<UNK>",
        named_tokens={"image_token": IMAGE_TOKEN},
        other_special_tokens=[PATCH_TOKEN, *MARKERS, *tile_markers, *TURN_TOKENS],
    )
    side = s.vision.image_size
    processor = AyaVisionProcessor(
        image_processor=GotOcr2ImageProcessor(
            size={"height": side, "width": side},
            crop_to_patches=True,
            min_patches=1,
            max_patches=s.max_tiles,
            image_mean=SIGLIP_NORM,
            image_std=SIGLIP_NORM,
        ),
        tokenizer=tokenizer,
        patch_size=s.vision.patch_size,
        img_size=side,
        downsample_factor=DOWNSAMPLE_FACTOR,
        image_token=IMAGE_TOKEN,
        img_patch_token=PATCH_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )
    text = text_config(
        Cohere2Config,
        tokenizer,
        s.text,
        max_positions=8192,
        sliding_window=4096,
        layer_types=sliding_then_full(s.text.layers),
    )
    config = AyaVisionConfig(
        vision_config=vision_config(SiglipVisionConfig, s.vision, vision_use_head=False),
        text_config=text,
        vision_feature_select_strategy="full",  # SigLIP has no CLS to drop
        vision_feature_layer=-1,
        downsample_factor=DOWNSAMPLE_FACTOR,
        image_token_index=processor.image_token_id,
        alignment_intermediate_size=s.alignment_intermediate,
    )
    return AyaVisionForConditionalGeneration, config, processor
