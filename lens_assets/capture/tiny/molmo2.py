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

from .blocks import (
    CHATML_SPECIALS,
    TextSizes,
    VisionSizes,
    chatml_template,
    text_config,
    vision_config,
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
CHAT_TEMPLATE = chatml_template("<|image|>", "<|video|>")


@dataclass(frozen=True)
class Molmo2Sizes:
    vision: VisionSizes  # image_size: one crop, square
    vision_head_dim: int
    overlap: int  # overlap margin (patches) on each side of a high-res crop
    max_crops: int
    adapter_intermediate: int
    text: TextSizes


# Parameters: tiny 0.16 M, small 6.0 M, base 449 M (the real 383 M tower: the 25 SigLIP so400m
# layers Molmo2 reads, 378 px crops, patch 14; a 1024-wide 4-layer LLM).
PRESETS: dict[str, Molmo2Sizes] = {
    "tiny": Molmo2Sizes(
        VisionSizes(32, 64, 2, 2, 32, 8), 16, 1, 2, 128, TextSizes(64, 128, 2, 4, 2, 16)
    ),
    "small": Molmo2Sizes(
        VisionSizes(256, 1024, 4, 4, 224, 14), 64, 2, 4, 688, TextSizes(256, 688, 2, 4, 2, 64)
    ),
    "base": Molmo2Sizes(
        VisionSizes(1152, 4304, 25, 16, 378, 14),
        72,
        4,
        8,
        2816,
        TextSizes(1024, 2816, 4, 8, 4, 128),
    ),
}


def build(
    preset: str,
) -> tuple[type[Molmo2ForConditionalGeneration], Molmo2Config, Molmo2Processor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_tokenizer(
        **CHATML_SPECIALS,
        unk="<unk>",
        named_tokens={"image_token": "<|image|>", "video_token": "<|video|>"},
        other_special_tokens=[*IMAGE_MARKERS, "<|im_start|>"],
    )
    side = s.vision.image_size
    crops = {
        "size": {"height": side, "width": side},
        "patch_size": s.vision.patch_size,
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
    heads = {
        "num_key_value_heads": s.vision.heads,
        "head_dim": s.vision_head_dim,
    }
    vision = vision_config(Molmo2VisionConfig, s.vision, **heads, image_size=[side, side])
    adapter = Molmo2AdapterConfig(
        # The last layer and the one before it, as the released [24, 18] of 25 reads two depths.
        vision_feature_layer=[-1, -2],
        hidden_size=s.vision.hidden,
        num_attention_heads=s.vision.heads,
        **heads,
        intermediate_size=s.adapter_intermediate,
        text_hidden_size=s.text.hidden,
    )
    text = text_config(
        Molmo2TextConfig,
        tokenizer,
        s.text,
        max_positions=4096,
        additional_vocab_size=0,  # every special token is in the tiny tokenizer's own vocab
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
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
