"""PerceptionLM layout: Perception Encoder (a timm ViT in a TimmWrapper) -> MLP + 2x2 average
pooling -> Llama decoder.

With ``vision_input_type="thumb+tile"`` an image becomes a thumbnail (the whole image on one
tile) followed by the tiles of the best grid of at most ``max_num_tiles`` tiles, so images of
different aspect ratios give different tile counts. All tiles run through the tower on its
batch axis; the tower keeps a class token in front of each tile's patches, which the model
drops before the projector. Each tile then becomes ``(tile / patch / 2) ** 2`` ``<|image|>``
tokens. The vision tower needs ``timm``; the processor needs a video processor, which needs
torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    LlamaConfig,
    PerceptionLMConfig,
    PerceptionLMForConditionalGeneration,
    PerceptionLMImageProcessor,
    PerceptionLMProcessor,
    PerceptionLMVideoProcessor,
    TimmWrapperConfig,
)

from .blocks import TextSizes, VisionSizes, text_config
from .tokenizer import build_tokenizer

IMAGE_TOKEN = "<|image|>"
VIDEO_TOKEN = "<|video|>"
POOLING_RATIO = 2  # the projector's 2x2 average pooling, as in the real checkpoints
TIMM_ARCHITECTURE = "vit_pe_core_large_patch14_336"  # the Perception Encoder family in timm

# Llama 3 turns; the template (not the tokenizer) emits the BOS token.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>{{ '\\n\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image|>"
    "{% elif item['type'] == 'video' %}<|video|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>"
    "{{ '\\n\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class PerceptionLMSizes:
    vision: VisionSizes  # image_size: one tile; the timm tower takes no intermediate size
    max_num_tiles: int
    text: TextSizes


# Parameters: tiny 0.17 M, small 7.4 M, base 352 M (the PE-Core L/14 tower shape of
# Perception-LM-1B, 304 M: 1024 wide in 23 blocks on 448-pixel tiles, with a 4-layer, 1024-wide
# Llama).
PRESETS: dict[str, PerceptionLMSizes] = {
    "tiny": PerceptionLMSizes(VisionSizes(32, None, 2, 2, 32, 8), 6, TextSizes(64, 128, 2, 4, 2)),
    "small": PerceptionLMSizes(
        VisionSizes(256, None, 6, 4, 112, 14), 6, TextSizes(256, 688, 2, 4, 2)
    ),
    "base": PerceptionLMSizes(
        VisionSizes(1024, None, 23, 16, 448, 14), 36, TextSizes(1024, 2816, 4, 8, 2)
    ),
}


def build(
    preset: str,
) -> tuple[type[PerceptionLMForConditionalGeneration], PerceptionLMConfig, PerceptionLMProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_tokenizer(
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad="<|finetune_right_pad_id|>",
        named_tokens={"image_token": IMAGE_TOKEN, "video_token": VIDEO_TOKEN},
        other_special_tokens=["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"],
    )
    tile = s.vision.image_size
    processor = PerceptionLMProcessor(
        image_processor=PerceptionLMImageProcessor(
            tile_size=tile, max_num_tiles=s.max_num_tiles, vision_input_type="thumb+tile"
        ),
        video_processor=PerceptionLMVideoProcessor(size={"height": tile, "width": tile}),
        tokenizer=tokenizer,
        patch_size=s.vision.patch_size,
        pooling_ratio=POOLING_RATIO,
        chat_template=CHAT_TEMPLATE,
    )
    # timm builds the tower from `model_args` (pretrained=False: nothing is downloaded); the
    # projector reads its input width from `embed_dim`.
    vision = TimmWrapperConfig(
        architecture=TIMM_ARCHITECTURE,
        model_args={
            "img_size": tile,
            "patch_size": s.vision.patch_size,
            "embed_dim": s.vision.hidden,
            "depth": s.vision.layers,
            "num_heads": s.vision.heads,
        },
    )
    config = PerceptionLMConfig(
        vision_config=vision,
        text_config=text_config(LlamaConfig, tokenizer, s.text, max_positions=8192),
        vision_use_cls_token=True,
        projector_pooling_ratio=POOLING_RATIO,
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
    )
    return PerceptionLMForConditionalGeneration, config, processor
