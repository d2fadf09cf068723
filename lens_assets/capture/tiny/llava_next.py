"""LLaVA-NeXT (1.6) layout: CLIP vision tower on anyres tiles -> MLP projector -> Mistral decoder.

An image is resized onto the best of a few "pinpoint" resolutions, cut into tower-sized tiles,
and a downscaled copy of the whole image (the base tile) goes first; all tiles run through the
tower on its batch axis. The LLM sees the base tile's features, then the grid tiles' features
with the padding cropped off and an ``image_newline`` vector after each row, so tiles give
unequal token counts. The pinpoints must be the same in the config and the image processor.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    CLIPVisionConfig,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    MistralConfig,
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


@dataclass(frozen=True)
class LlavaNextSizes:
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int


# Parameters: tiny 0.15 M (0.6 MB on disk), small 6.6 M, base 351 M (the real CLIP
# ViT-L/14-336 tower of llava-v1.6-mistral-7b, 304 M, with a 4-layer, 1024-wide Mistral).
PRESETS: dict[str, LlavaNextSizes] = {
    "tiny": LlavaNextSizes(32, 2, 2, 32, 8, 64, 128, 2, 4, 2),
    "small": LlavaNextSizes(256, 6, 4, 112, 14, 256, 688, 2, 4, 2),
    "base": LlavaNextSizes(1024, 24, 16, 336, 14, 1024, 2816, 4, 8, 2),
}


def build(
    preset: str,
) -> tuple[type[LlavaNextForConditionalGeneration], LlavaNextConfig, LlavaNextProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    grid = pinpoints(s.image_size)
    tokenizer = build_tokenizer(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        named_tokens={"image_token": IMAGE_TOKEN},
        other_special_tokens=["[INST]", "[/INST]"],
        add_bos=True,
    )
    processor = LlavaNextProcessor(
        image_processor=LlavaNextImageProcessor(
            size={"shortest_edge": s.image_size},
            crop_size={"height": s.image_size, "width": s.image_size},
            image_grid_pinpoints=grid,
        ),
        tokenizer=tokenizer,
        patch_size=s.patch_size,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        num_additional_image_tokens=1,  # the CLS position of the CLIP tower
        chat_template=CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=s.vision_hidden,
        intermediate_size=4 * s.vision_hidden,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=s.image_size,
        patch_size=s.patch_size,
        hidden_act="quick_gelu",
    )
    text = MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_kv_heads,
        max_position_embeddings=32768,
        sliding_window=None,  # Mistral-7B-Instruct-v0.2 attends over the whole context
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaNextConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=processor.image_token_id,
        image_grid_pinpoints=grid,
        image_seq_length=(s.image_size // s.patch_size) ** 2,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        vision_feature_layer=FEATURE_LAYER,
    )
    return LlavaNextForConditionalGeneration, config, processor
