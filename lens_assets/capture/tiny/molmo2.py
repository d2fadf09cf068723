"""Molmo2 layout: SigLIP-style ViT on crops -> attention-pooling adapter -> Molmo2 (Qwen3-like).

Each image becomes one low-resolution crop of the whole image plus up to ``max_crops``
overlapping high-resolution crops; all crops of the batch lie on the vision batch axis
(``image_num_crops`` per image). The adapter concatenates two ViT layers' features, pools every
2x2 patch window into one token with cross-attention (``image_token_pooling`` indexes the
patches) and projects to the LLM width, returning all images' tokens packed as
``(tokens, dim)``. In the prompt each token is an ``<im_patch>``, laid out in rows closed by
``<im_col>``: the low-res grid, then the high-res grid (``image_grids`` holds both).
The image processor has no PIL variant and the processor needs a video processor: torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    Molmo2AdapterConfig,
    Molmo2Config,
    Molmo2ForConditionalGeneration,
    Molmo2ImageProcessor,
    Molmo2Processor,
    Molmo2TextConfig,
    Molmo2VideoProcessor,
    Molmo2VisionConfig,
)

from .tokenizer import build_tokenizer

POOLING = [2, 2]  # patches per image token (rows, cols)
ROPE_THETA = 1_000_000.0
IMAGE_MARKERS = (
    "<im_patch>",
    "<im_col>",
    "<im_start>",
    "<low_res_im_start>",
    "<im_end>",
    "<frame_start>",
    "<frame_end>",
    "<im_low>",
)

# ChatML; an image item becomes the <|image|> placeholder the processor expands. The processor
# itself prepends the BOS (here the EOS, as the released tokenizer has no BOS).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>"
    "{% elif item['type'] == 'video' %}<|video|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class Molmo2Sizes:
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    vision_head_dim: int
    crop_size: int
    patch_size: int
    overlap: int  # overlap margin (patches) on each side of a high-res crop
    max_crops: int
    adapter_intermediate: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_head_dim: int


# Parameters: tiny 0.16 M, small 6.0 M, base 449 M (the real 383 M tower: the 25 SigLIP so400m
# layers Molmo2 reads, 378 px crops, patch 14; a 1024-wide 4-layer LLM).
PRESETS: dict[str, Molmo2Sizes] = {
    "tiny": Molmo2Sizes(32, 64, 2, 2, 16, 32, 8, 1, 2, 128, 64, 128, 2, 4, 2, 16),
    "small": Molmo2Sizes(256, 1024, 4, 4, 64, 224, 14, 2, 4, 688, 256, 688, 2, 4, 2, 64),
    "base": Molmo2Sizes(1152, 4304, 25, 16, 72, 378, 14, 4, 8, 2816, 1024, 2816, 4, 8, 4, 128),
}


def build(
    preset: str,
) -> tuple[type[Molmo2ForConditionalGeneration], Molmo2Config, Molmo2Processor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_tokenizer(
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk="<unk>",
        named_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
        other_special_tokens=[*IMAGE_MARKERS, "<|im_start|>"],
    )
    crops = {
        "size": {"height": s.crop_size, "width": s.crop_size},
        "patch_size": s.patch_size,
        "pooling_size": POOLING,
    }
    processor = Molmo2Processor(
        image_processor=Molmo2ImageProcessor(
            **crops, max_crops=s.max_crops, overlap_margins=[s.overlap, s.overlap]
        ),
        video_processor=Molmo2VideoProcessor(**crops),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    vision = Molmo2VisionConfig(
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        num_key_value_heads=s.vision_heads,
        head_dim=s.vision_head_dim,
        image_size=[s.crop_size, s.crop_size],
        patch_size=s.patch_size,
    )
    adapter = Molmo2AdapterConfig(
        # The last layer and the one before it, as the released [24, 18] of 25 reads two depths.
        vision_feature_layer=[-1, -2],
        hidden_size=s.vision_hidden,
        num_attention_heads=s.vision_heads,
        num_key_value_heads=s.vision_heads,
        head_dim=s.vision_head_dim,
        intermediate_size=s.adapter_intermediate,
        text_hidden_size=s.text_hidden,
    )
    text = Molmo2TextConfig(
        vocab_size=len(tokenizer),
        additional_vocab_size=0,  # every special token is in the tiny tokenizer's own vocab
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_kv_heads,
        head_dim=s.text_head_dim,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Molmo2Config(
        vision_config=vision,
        adapter_config=adapter,
        text_config=text,
        image_start_token_id=ids("<im_start>"),
        low_res_image_start_token_id=ids("<low_res_im_start>"),
        image_end_token_id=ids("<im_end>"),
        image_patch_id=ids("<im_patch>"),
        frame_start_token_id=ids("<frame_start>"),
        frame_end_token_id=ids("<frame_end>"),
    )
    return Molmo2ForConditionalGeneration, config, processor
