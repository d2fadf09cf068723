"""LLaVA-1.5 layout: CLIP vision tower -> MLP projector -> Llama decoder.

The CLIP tower has a CLS position; with ``vision_feature_select_strategy="default"`` LLaVA drops
it, so the processor must be told ``num_additional_image_tokens=1`` to emit exactly
``(image_size / patch_size) ** 2`` ``<image>`` tokens per image.
"""

from __future__ import annotations

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
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
FEATURE_STRATEGY = "default"  # drop CLS, as LLaVA-1.5 does
FEATURE_LAYER = -2  # penultimate CLIP layer, as LLaVA-1.5 does

# "USER: <image>\n... ASSISTANT:" turns as in llava-1.5-hf; an image item becomes "<image>\n".
# Turns are joined with a space emitted as an expression: chat templates render with
# trim_blocks, which would eat a literal newline right after a block tag.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if not loop.first %}{{ ' ' }}{% endif %}"
    "{{ message['role'] | upper }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


# base: the real CLIP ViT-L/14-336 tower of LLaVA-1.5 with a 4-layer, 1024-wide Llama.
PRESETS: dict[str, TowerSizes] = {
    "tiny": TowerSizes(VisionSizes(32, 128, 2, 2, 32, 8), TextSizes(64, 128, 2, 4, 4)),
    "small": TowerSizes(VisionSizes(256, 1024, 6, 4, 112, 14), TextSizes(256, 688, 2, 4, 4)),
    "base": TowerSizes(VisionSizes(1024, 4096, 24, 16, 336, 14), TextSizes(1024, 2816, 4, 8, 8)),
}


def build(
    preset: str,
) -> tuple[type[LlavaForConditionalGeneration], LlavaConfig, LlavaProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_tokenizer(
        **LLAMA_SPECIALS,
        named_tokens={"image_token": IMAGE_TOKEN},
        add_bos=True,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(**center_crop(s.vision.image_size)),
        tokenizer=tokenizer,
        patch_size=s.vision.patch_size,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        num_additional_image_tokens=1,  # the CLS position of the CLIP tower
        chat_template=CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=vision_config(CLIPVisionConfig, s.vision),
        text_config=text_config(LlamaConfig, tokenizer, s.text, max_positions=4096),
        image_token_index=processor.image_token_id,
        image_seq_length=s.vision.grid**2,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        vision_feature_layer=FEATURE_LAYER,
    )
    return LlavaForConditionalGeneration, config, processor
