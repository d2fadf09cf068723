"""Gemma3 layout: SigLIP vision tower (no class token) -> pooling projector -> Gemma3 decoder.

The projector average-pools the patch grid down to ``mm_tokens_per_image`` tokens (a square
number) and projects them onto the LLM width. The chat template marks an image with the
begin-of-image token ``<start_of_image>``, which the processor expands into
``\\n\\n<start_of_image>`` + ``mm_tokens_per_image`` x ``<image_soft_token>`` +
``<end_of_image>\\n\\n``. Only the soft tokens carry image features: they are
``config.image_token_id``, while the processor's own ``image_token_id`` is the begin-of-image
token. ``token_type_ids`` mark the soft tokens, which the LLM attends to bidirectionally.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Gemma3TextConfig,
    SiglipVisionConfig,
)

from .blocks import (
    GEMMA_SPECIALS,
    TextSizes,
    VisionSizes,
    sliding_then_full,
    text_config,
    vision_config,
)
from .tokenizer import build_tokenizer

IMAGE_TOKEN = "<image_soft_token>"  # what the LLM sees in place of image features
BOI_TOKEN = "<start_of_image>"  # what the chat template writes for an image
EOI_TOKEN = "<end_of_image>"
TURN_TOKENS = ("<start_of_turn>", "<end_of_turn>")

# Gemma's turns, "<start_of_turn>user\n...<end_of_turn>\n", the assistant speaking as "model";
# an image item becomes the begin-of-image token. Newlines follow text or expressions only:
# chat templates render with trim_blocks, which eats a newline right after a block tag.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "<start_of_turn>{{ role }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<end_of_turn>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)


@dataclass(frozen=True)
class Gemma3Sizes:
    vision: VisionSizes
    tokens_per_image: int  # a square number dividing the patch grid
    text: TextSizes


# Parameters (vocab ~310): tiny 0.17 M (0.7 MB on disk), small 7 M, base 481 M: the real
# SigLIP so400m/14-896 tower of google/gemma-3-4b-it (417 M, 27 layers of 1152, 4,096 patches
# pooled to 256 image tokens) with a 4-layer, 1024-wide Gemma3 (63 M) in place of the 34-layer
# LLM.
PRESETS: dict[str, Gemma3Sizes] = {
    "tiny": Gemma3Sizes(VisionSizes(32, 64, 2, 2, 32, 8), 4, TextSizes(64, 256, 2, 4, 2, 16)),
    "small": Gemma3Sizes(
        VisionSizes(256, 1024, 6, 4, 112, 14), 16, TextSizes(256, 1024, 2, 4, 2, 64)
    ),
    "base": Gemma3Sizes(
        VisionSizes(1152, 4304, 27, 16, 896, 14), 256, TextSizes(1024, 4096, 4, 8, 4, 128)
    ),
}


def build(
    preset: str,
) -> tuple[type[Gemma3ForConditionalGeneration], Gemma3Config, Gemma3Processor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    # BOS comes from the chat template, so the tokenizer adds nothing itself.
    tokenizer = build_tokenizer(
        **GEMMA_SPECIALS,
        named_tokens={"image_token": IMAGE_TOKEN, "boi_token": BOI_TOKEN, "eoi_token": EOI_TOKEN},
        other_special_tokens=TURN_TOKENS,
    )
    # No pan-and-scan crops: one square frame per image.
    side = s.vision.image_size
    image_processor = Gemma3ImageProcessor(
        size={"height": side, "width": side}, do_pan_and_scan=False
    )
    processor = Gemma3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=s.tokens_per_image,
    )
    vision = vision_config(SiglipVisionConfig, s.vision, vision_use_head=False)
    # Gemma3 interleaves sliding-window and global layers; the tiny LLM keeps one of each.
    text = text_config(
        Gemma3TextConfig,
        tokenizer,
        s.text,
        max_positions=8192,
        query_pre_attn_scalar=s.text.head_dim,
        sliding_window=1024,
        layer_types=sliding_then_full(s.text.layers),
    )
    config = Gemma3Config(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        mm_tokens_per_image=s.tokens_per_image,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        boi_token_index=tokenizer.convert_tokens_to_ids(BOI_TOKEN),
        eoi_token_index=tokenizer.convert_tokens_to_ids(EOI_TOKEN),
    )
    return Gemma3ForConditionalGeneration, config, processor
