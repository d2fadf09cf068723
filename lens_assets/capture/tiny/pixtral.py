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

from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    MistralConfig,
    PixtralImageProcessor,
    PixtralProcessor,
    PixtralVisionConfig,
    PreTrainedTokenizerFast,
)

from .blocks import LLAMA_SPECIALS, TextSizes, TowerSizes, VisionSizes, text_config, vision_config
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


# Parameters: tiny 0.15 M, small 6.1 M, base 453 M (the real 403 M Pixtral-12B vision tower,
# 1024 px, patch 16, gated MLP; a 1024-wide 4-layer Mistral). The tower's image_size is also
# the image processor's longest edge.
PRESETS: dict[str, TowerSizes] = {
    "tiny": TowerSizes(VisionSizes(32, 64, 2, 2, 32, 8), TextSizes(64, 128, 2, 4, 2, 16)),
    "small": TowerSizes(VisionSizes(256, 1024, 4, 4, 256, 16), TextSizes(256, 688, 2, 4, 2, 64)),
    "base": TowerSizes(
        VisionSizes(1024, 4096, 24, 16, 1024, 16), TextSizes(1024, 2816, 4, 8, 4, 128)
    ),
}


def build_mistral_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with Pixtral's image and instruct tokens (BOS added on encode)."""
    return build_tokenizer(
        **LLAMA_SPECIALS,
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


def model_fields(s: TowerSizes, tokenizer: PreTrainedTokenizerFast) -> dict[str, object]:
    """The Pixtral tower and Mistral decoder configs, which Mistral3 shares with Pixtral."""
    return {
        "vision_config": vision_config(
            PixtralVisionConfig,
            s.vision,
            rope_parameters={"rope_type": "axial", "rope_theta": VISION_ROPE_THETA},
        ),
        "text_config": text_config(
            MistralConfig,
            tokenizer,
            s.text,
            max_positions=4096,
            sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": TEXT_ROPE_THETA},
        ),
    }


def build(
    preset: str,
) -> tuple[type[LlavaForConditionalGeneration], LlavaConfig, PixtralProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_mistral_tokenizer()
    processor = build_processor(tokenizer, s.vision.image_size, s.vision.patch_size, merge_size=1)
    config = LlavaConfig(
        **model_fields(s, tokenizer),
        image_token_index=processor.image_token_id,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="full",  # Pixtral has no class token to drop
        vision_feature_layer=-1,
        image_seq_length=s.vision.grid**2,
    )
    return LlavaForConditionalGeneration, config, processor
