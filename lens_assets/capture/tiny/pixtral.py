"""Pixtral layout: LLaVA with a Pixtral vision tower -> MLP projector -> Mistral decoder.

The Pixtral tower keeps each image's aspect ratio (longest edge resized to at most
``longest_edge``, both sides rounded up to whole patches) and runs all images of a batch as one
packed sequence. In the prompt an image becomes rows of ``[IMG]`` tokens, each row closed by an
``[IMG_BREAK]`` and the last by ``[IMG_END]``; only ``[IMG]`` positions receive image features.
The processor (``PixtralProcessor``) needs torchvision.

The tokenizer and processor helpers here are shared with the Mistral3 builder, which uses the
same tower and prompt format with a spatial patch merger in front of the projector.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    MistralConfig,
    PixtralImageProcessor,
    PixtralProcessor,
    PixtralVisionConfig,
    PreTrainedTokenizerFast,
)

from .tokenizer import build_tokenizer

IMAGE_TOKEN = "[IMG]"
IMAGE_BREAK_TOKEN = "[IMG_BREAK]"
IMAGE_END_TOKEN = "[IMG_END]"
VISION_ROPE_THETA = 10_000.0
TEXT_ROPE_THETA = 1_000_000_000.0

# Mistral's instruct format: "[INST]<images><text>[/INST]"; BOS comes from the tokenizer.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}[INST]{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}[IMG]"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'user' %}[/INST]{% else %}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)


@dataclass(frozen=True)
class PixtralSizes:
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    longest_edge: int  # the image processor's cap, and the tower's nominal image_size
    patch_size: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int


# Parameters: tiny 0.15 M, small 6.1 M, base 453 M (the real 403 M Pixtral-12B vision tower,
# 1024 px, patch 16, gated MLP; a 1024-wide 4-layer Mistral).
PRESETS: dict[str, PixtralSizes] = {
    "tiny": PixtralSizes(32, 64, 2, 2, 32, 8, 64, 128, 2, 4, 2),
    "small": PixtralSizes(256, 1024, 4, 4, 256, 16, 256, 688, 2, 4, 2),
    "base": PixtralSizes(1024, 4096, 24, 16, 1024, 16, 1024, 2816, 4, 8, 4),
}


def build_mistral_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with Pixtral's image and instruct tokens (BOS added on encode)."""
    return build_tokenizer(
        bos="<s>",
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        named_tokens={"image_token": IMAGE_TOKEN},
        other_special_tokens=[IMAGE_BREAK_TOKEN, IMAGE_END_TOKEN, "[INST]", "[/INST]"],
        add_bos=True,
    )


def build_processor(
    tokenizer: PreTrainedTokenizerFast, longest_edge: int, patch_size: int, merge_size: int
) -> PixtralProcessor:
    """PixtralProcessor sizing images to whole ``patch_size * merge_size`` cells."""
    return PixtralProcessor(
        image_processor=PixtralImageProcessor(
            size={"longest_edge": longest_edge}, patch_size=patch_size * merge_size
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        spatial_merge_size=merge_size,
        image_token=IMAGE_TOKEN,
        image_break_token=IMAGE_BREAK_TOKEN,
        image_end_token=IMAGE_END_TOKEN,
        chat_template=CHAT_TEMPLATE,
    )


def vision_config(s: PixtralSizes) -> PixtralVisionConfig:
    return PixtralVisionConfig(
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=s.longest_edge,
        patch_size=s.patch_size,
        rope_parameters={"rope_type": "axial", "rope_theta": VISION_ROPE_THETA},
    )


def text_config(s: PixtralSizes, tokenizer: PreTrainedTokenizerFast) -> MistralConfig:
    return MistralConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_kv_heads,
        head_dim=s.text_hidden // s.text_heads,
        max_position_embeddings=4096,
        sliding_window=None,
        rope_parameters={"rope_type": "default", "rope_theta": TEXT_ROPE_THETA},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build(
    preset: str,
) -> tuple[type[LlavaForConditionalGeneration], LlavaConfig, PixtralProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_mistral_tokenizer()
    processor = build_processor(tokenizer, s.longest_edge, s.patch_size, merge_size=1)
    config = LlavaConfig(
        vision_config=vision_config(s),
        text_config=text_config(s, tokenizer),
        image_token_index=processor.image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",  # Pixtral has no class token to drop
        vision_feature_layer=-1,
        image_seq_length=(s.longest_edge // s.patch_size) ** 2,
    )
    return LlavaForConditionalGeneration, config, processor
