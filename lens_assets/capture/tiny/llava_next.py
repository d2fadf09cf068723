"""LLaVA-NeXT (1.6) layout: CLIP vision tower on anyres tiles -> MLP projector -> Mistral decoder.

An image is resized onto the best of a few "pinpoint" resolutions, cut into tower-sized tiles,
and a downscaled copy of the whole image (the base tile) goes first; all tiles run through the
tower on its batch axis. The LLM sees the base tile's features, then the grid tiles' features
with the padding cropped off and an ``image_newline`` vector after each row, so tiles give
unequal token counts. The pinpoints must be the same in the config and the image processor.
"""

from __future__ import annotations

from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    MistralConfig,
)

from .blocks import (
    LLAMA_SPECIALS,
    TextSizes,
    TowerSizes,
    VisionSizes,
    center_crop,
    text_config,
    vision_config,
)
from .tokenizer import build_tokenizer

IMAGE_TOKEN = "<image>"
FEATURE_STRATEGY = "default"  # drop CLS, as LLaVA-NeXT does
FEATURE_LAYER = -2  # penultimate CLIP layer, as LLaVA-NeXT does

# Mistral's "[INST] ... [/INST]" turns as in llava-v1.6-mistral-7b-hf; an image item becomes
# "<image>\n". The tokenizer adds <s>, so the template does not.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST] {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %} [/INST]{% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


def pinpoints(tile: int) -> list[list[int]]:
    """LLaVA-NeXT's five grid shapes (1x2, 2x1, 2x2, 1x3, 3x1 tiles) in pixels of ``tile``."""
    return [[tile * rows, tile * cols] for rows, cols in ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))]


# Parameters: tiny 0.15 M (0.6 MB on disk), small 6.6 M, base 351 M (the real CLIP
# ViT-L/14-336 tower of llava-v1.6-mistral-7b, 304 M, with a 4-layer, 1024-wide Mistral).
PRESETS: dict[str, TowerSizes] = {
    "tiny": TowerSizes(VisionSizes(32, 128, 2, 2, 32, 8), TextSizes(64, 128, 2, 4, 2)),
    "small": TowerSizes(VisionSizes(256, 1024, 6, 4, 112, 14), TextSizes(256, 688, 2, 4, 2)),
    "base": TowerSizes(VisionSizes(1024, 4096, 24, 16, 336, 14), TextSizes(1024, 2816, 4, 8, 2)),
}


def build(
    preset: str,
) -> tuple[type[LlavaNextForConditionalGeneration], LlavaNextConfig, LlavaNextProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    grid = pinpoints(s.vision.image_size)
    tokenizer = build_tokenizer(
        **LLAMA_SPECIALS,
        named_tokens={"image_token": IMAGE_TOKEN},
        other_special_tokens=["[INST]", "[/INST]"],
        add_bos=True,
    )
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            **center_crop(s.vision.image_size), image_grid_pinpoints=grid
        ),
        tokenizer=tokenizer,
        patch_size=s.vision.patch_size,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        num_additional_image_tokens=1,  # the CLS position of the CLIP tower
        chat_template=CHAT_TEMPLATE,
    )
    # Mistral-7B-Instruct-v0.2 attends over the whole context: no sliding window.
    text = text_config(MistralConfig, tokenizer, s.text, max_positions=32768, sliding_window=None)
    config = LlavaNextConfig(
        vision_config=vision_config(CLIPVisionConfig, s.vision, hidden_act="quick_gelu"),
        text_config=text,
        image_token_index=processor.image_token_id,
        image_grid_pinpoints=grid,
        image_seq_length=s.vision.grid**2,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        vision_feature_layer=FEATURE_LAYER,
    )
    return LlavaNextForConditionalGeneration, config, processor
