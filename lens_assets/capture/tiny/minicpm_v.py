"""MiniCPM-V 4.6 layout: NaViT SigLIP tower with a window merger -> MLP merger -> Qwen3.5.

Every image is resized to whole ``patch_size * 4`` cells near ``scale_resolution`` squared pixels;
a large image also gets ``max_slice_nums`` or fewer slices beside this source view. All views of
the batch are packed into one patch sequence (``target_sizes`` holds each view's patch grid).
After encoder layer ``insert_layer_id`` the tower's ``vit_merger`` folds 2x2 patches into one,
and the ``merger`` outside the tower folds 2x2 again into the LLM width, one tensor per view, so
a view of ``h x w`` patches becomes ``(h / 4) * (w / 4)`` image tokens. The LLM is Qwen3.5
(hybrid linear and full attention). The processor needs a video processor, so torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    MiniCPMV4_6Config,
    MiniCPMV4_6ForConditionalGeneration,
    MiniCPMV4_6ImageProcessor,
    MiniCPMV4_6Processor,
    MiniCPMV4_6VideoProcessor,
    MiniCPMV4_6VisionConfig,
    Qwen3_5TextConfig,
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

DOWNSAMPLE_MODE = "16x"  # both 2x2 merges: the window merger inside the tower and the MLP merger
ROPE_THETA = 10_000_000.0

# ChatML as MiniCPM-V 4.6 uses it; an image item becomes the image token the processor expands.
CHAT_TEMPLATE = chatml_template("<|image_pad|>\n", "<|video_pad|>\n")


@dataclass(frozen=True)
class MiniCPMVSizes:
    # image_size: position-embedding grid side in pixels (NaViT positions interpolate)
    vision: VisionSizes
    insert_layer_id: int  # the window merger runs after this encoder layer
    scale_resolution: int
    text: TextSizes
    linear_heads: int
    linear_head_dim: int


# Parameters: tiny 0.21 M, small 13 M, base 628 M (the 522 M vision tower of MiniCPM-V 4.6:
# SigLIP2-400M with its window merger; a 1024-wide 4-layer Qwen3.5). In tiny, the window merger
# runs after layer 0, so encoder layer 1 already sees the 2x2-merged grid.
PRESETS: dict[str, MiniCPMVSizes] = {
    "tiny": MiniCPMVSizes(
        VisionSizes(32, 64, 2, 2, 64, 8), 0, 64, TextSizes(64, 128, 2, 4, 2, 16), 2, 16
    ),
    "small": MiniCPMVSizes(
        VisionSizes(256, 1024, 6, 4, 224, 14), 2, 224, TextSizes(256, 688, 2, 4, 2, 64), 4, 32
    ),
    "base": MiniCPMVSizes(
        VisionSizes(1152, 4304, 27, 16, 980, 14),
        6,
        448,
        TextSizes(1024, 3584, 4, 8, 2, 128),
        16,
        128,
    ),
}


def build(
    preset: str,
) -> tuple[type[MiniCPMV4_6ForConditionalGeneration], MiniCPMV4_6Config, MiniCPMV4_6Processor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_tokenizer(
        **CHATML_SPECIALS,
        unk="<unk>",
        named_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "image_start_token": "<image>",
            "image_end_token": "</image>",
            "slice_start_token": "<slice>",
            "slice_end_token": "</slice>",
            "image_id_start_token": "<image_id>",
            "image_id_end_token": "</image_id>",
        },
        other_special_tokens=["<|im_start|>"],
    )
    views = {
        "patch_size": s.vision.patch_size,
        "scale_resolution": s.scale_resolution,
        "slice_mode": True,  # as the released model: large images get slices
        "downsample_mode": DOWNSAMPLE_MODE,
        "use_image_id": True,
    }
    processor = MiniCPMV4_6Processor(
        image_processor=MiniCPMV4_6ImageProcessor(**views),
        video_processor=MiniCPMV4_6VideoProcessor(**views),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    # Qwen3.5 mixes linear-attention layers with a full-attention one every fourth (and last).
    layers = s.text.layers
    text = text_config(
        Qwen3_5TextConfig,
        tokenizer,
        s.text,
        max_positions=4096,
        linear_num_key_heads=s.linear_heads,
        linear_num_value_heads=s.linear_heads,
        linear_key_head_dim=s.linear_head_dim,
        linear_value_head_dim=s.linear_head_dim,
        layer_types=[
            "full_attention" if (i + 1) % 4 == 0 or i == layers - 1 else "linear_attention"
            for i in range(layers)
        ],
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
    )
    config = MiniCPMV4_6Config(
        vision_config=vision_config(MiniCPMV4_6VisionConfig, s.vision),
        text_config=text,
        insert_layer_id=s.insert_layer_id,
        image_size=s.scale_resolution,
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        downsample_mode=DOWNSAMPLE_MODE,
    )
    return MiniCPMV4_6ForConditionalGeneration, config, processor
