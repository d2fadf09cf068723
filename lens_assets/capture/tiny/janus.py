"""Janus (Janus-Pro) layout: SigLIP-style vision tower -> MLP aligner -> Llama decoder, plus a
VQ-VAE and generation head for image generation that image understanding never runs.

An image is padded to a square and resized to the tower's input; every patch becomes one
``<image_placeholder>`` token, framed by ``<begin_of_image>``/``<end_of_image>``. The tower has
no class token. The VQ-VAE normalises with ``GroupNorm(32)``, so its channel counts cannot go
below 32: that makes this the largest tiny checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    JanusConfig,
    JanusForConditionalGeneration,
    JanusImageProcessor,
    JanusProcessor,
    JanusVisionConfig,
    JanusVQVAEConfig,
    LlamaConfig,
)

from .blocks import SIGLIP_NORM, TextSizes, VisionSizes, text_config, vision_config
from .tokenizer import build_tokenizer

IMAGE_TOKEN = "<image_placeholder>"
BEGIN_OF_IMAGE = "<begin_of_image>"
END_OF_IMAGE = "<end_of_image>"
VQ_CODE_DIM = 8  # width of a VQ code, as in Janus-Pro

# "<|User|>: ...\n\n<|Assistant|>:" turns as Janus-Pro writes them; an image item becomes
# "<image_placeholder>\n", which the processor expands and frames.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] | capitalize }}|>: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image_placeholder>{{ '\\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '\\n\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|Assistant|>:{% endif %}"
)


@dataclass(frozen=True)
class JanusSizes:
    vision: VisionSizes  # no intermediate size: the tower takes an mlp_ratio
    text: TextSizes
    vq_channels: int  # VQ-VAE base channels (GroupNorm(32) needs multiples of 32)
    vq_latent: int
    # One level per entry; the encoder halves the image between levels, so 2 ** (levels - 1)
    # must equal patch_size for its code grid to match the tower's patch grid.
    vq_multiplier: tuple[int, ...]
    vq_res_blocks: int
    vq_codes: int


# Parameters: tiny 0.55 M (0.41 M of them VQ-VAE and generation head; 2.2 MB on disk), small
# 8.4 M, base 448 M (the real SigLIP-L/16-384 tower of Janus-Pro-1B, 304 M, and its VQ-VAE
# shape, with a 4-layer, 1024-wide Llama).
PRESETS: dict[str, JanusSizes] = {
    "tiny": JanusSizes(
        VisionSizes(32, None, 2, 2, 32, 8), TextSizes(64, 128, 2, 4, 4), 32, 32, (1, 1, 1, 1), 1, 32
    ),
    "small": JanusSizes(
        VisionSizes(256, None, 6, 4, 112, 16),
        TextSizes(256, 688, 2, 4, 4),
        32,
        64,
        (1, 1, 1, 2, 2),
        1,
        1024,
    ),
    "base": JanusSizes(
        VisionSizes(1024, None, 24, 16, 384, 16),
        TextSizes(1024, 2816, 4, 8, 8),
        128,
        256,
        (1, 1, 2, 2, 4),
        2,
        16384,
    ),
}


def build(
    preset: str,
) -> tuple[type[JanusForConditionalGeneration], JanusConfig, JanusProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokens_per_image = s.vision.grid**2
    # DeepSeek spells its sentence tokens with full-width bars; ASCII ones do the same job here.
    tokenizer = build_tokenizer(
        bos="<|begin_of_sentence|>",
        eos="<|end_of_sentence|>",
        pad="<|pad|>",
        named_tokens={
            "image_token": IMAGE_TOKEN,
            "boi_token": BEGIN_OF_IMAGE,
            "eoi_token": END_OF_IMAGE,
        },
        other_special_tokens=["<|User|>", "<|Assistant|>"],
    )
    side = s.vision.image_size
    processor = JanusProcessor(
        image_processor=JanusImageProcessor(
            size={"height": side, "width": side}, image_mean=SIGLIP_NORM, image_std=SIGLIP_NORM
        ),
        tokenizer=tokenizer,
        num_image_tokens=tokens_per_image,
        chat_template=CHAT_TEMPLATE,
    )
    vision = vision_config(
        JanusVisionConfig,
        s.vision,
        projection_dim=s.text.hidden,  # the aligner maps straight into the LLM's width
        num_image_tokens=tokens_per_image,
    )
    vq = JanusVQVAEConfig(
        embed_dim=VQ_CODE_DIM,
        num_embeddings=s.vq_codes,
        base_channels=s.vq_channels,
        latent_channels=s.vq_latent,
        channel_multiplier=list(s.vq_multiplier),
        num_res_blocks=s.vq_res_blocks,
        projection_dim=s.text.hidden,
        image_token_embed_dim=s.text.hidden,
    )
    config = JanusConfig(
        vision_config=vision,
        text_config=text_config(LlamaConfig, tokenizer, s.text, max_positions=4096),
        vq_config=vq,
        image_token_id=tokenizer.image_token_id,
    )
    return JanusForConditionalGeneration, config, processor
