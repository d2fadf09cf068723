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

from .tokenizer import build_tokenizer

DOWNSAMPLE_MODE = "16x"  # both 2x2 merges: the window merger inside the tower and the MLP merger
ROPE_THETA = 10_000_000.0

# ChatML as MiniCPM-V 4.6 uses it; an image item becomes the image token the processor expands.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|image_pad|>\n"
    "{% elif item['type'] == 'video' %}<|video_pad|>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@dataclass(frozen=True)
class MiniCPMVSizes:
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int  # position-embedding grid side in pixels (NaViT positions interpolate)
    patch_size: int
    insert_layer_id: int  # the window merger runs after this encoder layer
    scale_resolution: int
    text_hidden: int
    text_intermediate: int
    text_layers: int
    text_heads: int
    text_kv_heads: int
    text_head_dim: int
    linear_heads: int
    linear_head_dim: int


# Parameters: tiny 0.21 M, small 13 M, base 628 M (the 522 M vision tower of MiniCPM-V 4.6:
# SigLIP2-400M with its window merger; a 1024-wide 4-layer Qwen3.5). In tiny, the window merger
# runs after layer 0, so encoder layer 1 already sees the 2x2-merged grid.
PRESETS: dict[str, MiniCPMVSizes] = {
    "tiny": MiniCPMVSizes(32, 64, 2, 2, 64, 8, 0, 64, 64, 128, 2, 4, 2, 16, 2, 16),
    "small": MiniCPMVSizes(256, 1024, 6, 4, 224, 14, 2, 224, 256, 688, 2, 4, 2, 64, 4, 32),
    "base": MiniCPMVSizes(1152, 4304, 27, 16, 980, 14, 6, 448, 1024, 3584, 4, 8, 2, 128, 16, 128),
}


def build(
    preset: str,
) -> tuple[type[MiniCPMV4_6ForConditionalGeneration], MiniCPMV4_6Config, MiniCPMV4_6Processor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_tokenizer(
        eos="<|im_end|>",
        pad="<|endoftext|>",
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
        "patch_size": s.patch_size,
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
    vision = MiniCPMV4_6VisionConfig(
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=s.image_size,
        patch_size=s.patch_size,
    )
    text = Qwen3_5TextConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=s.text_intermediate,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=s.text_kv_heads,
        head_dim=s.text_head_dim,
        linear_num_key_heads=s.linear_heads,
        linear_num_value_heads=s.linear_heads,
        linear_key_head_dim=s.linear_head_dim,
        linear_value_head_dim=s.linear_head_dim,
        layer_types=[
            "full_attention" if (i + 1) % 4 == 0 or i == s.text_layers - 1 else "linear_attention"
            for i in range(s.text_layers)
        ],
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = MiniCPMV4_6Config(
        vision_config=vision,
        text_config=text,
        insert_layer_id=s.insert_layer_id,
        image_size=s.scale_resolution,
        image_token_id=tokenizer.image_token_id,
        video_token_id=tokenizer.video_token_id,
        downsample_mode=DOWNSAMPLE_MODE,
    )
    return MiniCPMV4_6ForConditionalGeneration, config, processor
