"""InternVL (-hf format) layout: InternViT on dynamic tiles -> pixel shuffle + MLP -> Qwen2.

An image is cut into up to ``max_patches`` tower-sized tiles on the grid closest to its aspect
ratio, plus a downscaled thumbnail of the whole image last (when there is more than one tile);
every tile runs through the tower on its batch axis. The tower keeps a CLS position, which
``vision_feature_select_strategy="default"`` drops before the 0.5x pixel shuffle, so each tile
gives ``image_seq_length = (image_size / patch_size)**2 / 4`` `<IMG_CONTEXT>` tokens, between
`<img>` and `</img>`.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    GotOcr2ImageProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVideoProcessor,
    InternVLVisionConfig,
    Qwen2Config,
)

from .tokenizer import build_tokenizer

DOWNSAMPLE_RATIO = 0.5  # pixel shuffle: 2x2 patches -> one token
FEATURE_STRATEGY = "default"  # drop CLS, as InternVL does

# ChatML as InternVL3 uses it; an image item becomes "<IMG_CONTEXT>\n", which the processor
# expands to <img> + tiles x image_seq_length <IMG_CONTEXT> + </img>.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<IMG_CONTEXT>\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class InternVLSizes:
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    image_size: int  # one tile, square
    patch_size: int
    max_tiles: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int


# Parameters (vocab 307): tiny 0.15 M, small 5.2 M, base 0.35 B (the real InternViT-300M tower
# of InternVL3-1B, 0.30 B, with a 4-layer, 1024-wide Qwen2).
PRESETS: dict[str, InternVLSizes] = {
    "tiny": InternVLSizes(32, 2, 2, 32, 8, 6, 64, 128, 2, 2, 2),
    "small": InternVLSizes(256, 4, 4, 224, 14, 6, 256, 688, 2, 4, 2),
    "base": InternVLSizes(1024, 24, 16, 448, 14, 12, 1024, 2816, 4, 8, 2),
}


def build(
    preset: str,
) -> tuple[type[InternVLForConditionalGeneration], InternVLConfig, InternVLProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_tokenizer(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        named_tokens={
            "start_image_token": "<img>",
            "end_image_token": "</img>",
            "context_image_token": "<IMG_CONTEXT>",
            "video_token": "<video>",
        },
        other_special_tokens=["<|im_start|>"],
    )
    tokens_per_tile = int((s.image_size // s.patch_size) ** 2 * DOWNSAMPLE_RATIO**2)
    tile = {"height": s.image_size, "width": s.image_size}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(
            size=tile, crop_to_patches=True, min_patches=1, max_patches=s.max_tiles
        ),
        video_processor=InternVLVideoProcessor(size=tile),
        tokenizer=tokenizer,
        image_seq_length=tokens_per_tile,
        chat_template=CHAT_TEMPLATE,
    )
    vision = InternVLVisionConfig(
        hidden_size=s.vision_hidden,
        intermediate_size=4 * s.vision_hidden,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=[s.image_size, s.image_size],
        patch_size=[s.patch_size, s.patch_size],
    )
    text = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_kv_heads,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=processor.image_token_id,
        image_seq_length=tokens_per_tile,
        downsample_ratio=DOWNSAMPLE_RATIO,
        vision_feature_layer=-1,
        vision_feature_select_strategy=FEATURE_STRATEGY,
    )
    return InternVLForConditionalGeneration, config, processor
