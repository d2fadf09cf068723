"""LLaVA-1.5 layout: CLIP vision tower -> MLP projector -> Llama decoder.

The CLIP tower has a CLS position; with ``vision_feature_select_strategy="default"`` LLaVA drops
it, so the processor must be told ``num_additional_image_tokens=1`` to emit exactly
``(image_size / patch_size) ** 2`` ``<image>`` tokens per image.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
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


@dataclass(frozen=True)
class LlavaSizes:
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int


# base: the real CLIP ViT-L/14-336 tower of LLaVA-1.5 with a 4-layer, 1024-wide Llama.
PRESETS: dict[str, LlavaSizes] = {
    "tiny": LlavaSizes(32, 2, 2, 32, 8, 64, 128, 2, 4),
    "small": LlavaSizes(256, 6, 4, 112, 14, 256, 688, 2, 4),
    "base": LlavaSizes(1024, 24, 16, 336, 14, 1024, 2816, 4, 8),
}


def build(
    preset: str,
) -> tuple[type[LlavaForConditionalGeneration], LlavaConfig, LlavaProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_tokenizer(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        named_tokens={"image_token": IMAGE_TOKEN},
        add_bos=True,
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": s.image_size},
            crop_size={"height": s.image_size, "width": s.image_size},
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
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=processor.image_token_id,
        image_seq_length=(s.image_size // s.patch_size) ** 2,
        vision_feature_select_strategy=FEATURE_STRATEGY,
        vision_feature_layer=FEATURE_LAYER,
    )
    return LlavaForConditionalGeneration, config, processor
