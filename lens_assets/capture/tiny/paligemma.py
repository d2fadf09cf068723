"""PaliGemma layout: SigLIP vision tower (no class token) -> linear projector -> Gemma decoder.

Every patch becomes one image token, ``(image_size / patch_size) ** 2`` of them, placed before
``<bos>``. PaliGemma takes a plain prompt, no chat template: the processor turns
``"<image>caption en"`` into the image tokens, ``<bos>``, the prompt and a closing newline,
and marks the whole prefix with ``token_type_ids`` 0, over which the LLM attends
bidirectionally. The processor needs ``image_seq_length`` on the image processor, adds 1,152
``<locXXXX>``/``<segXXX>`` tokens to the tokenizer, and returns ``labels`` as well.
"""

from __future__ import annotations

from transformers import (
    GemmaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessor,
    SiglipVisionConfig,
)

from .blocks import GEMMA_SPECIALS, TextSizes, TowerSizes, VisionSizes, text_config, vision_config
from .tokenizer import build_tokenizer

IMAGE_TOKEN = "<image>"


# Parameters (vocab ~1,460 with the location and segmentation tokens): tiny 0.24 M (1.2 MB on
# disk), small 7.3 M, base 475 M: the real SigLIP so400m/14-224 tower of
# google/paligemma-3b-mix-224 (412 M, 27 layers of 1152) with a 4-layer, 1024-wide Gemma (61 M,
# one key-value head as in Gemma-2B) in place of Gemma-2B.
PRESETS: dict[str, TowerSizes] = {
    "tiny": TowerSizes(VisionSizes(32, 64, 2, 2, 32, 8), TextSizes(64, 256, 2, 4, 1, 16)),
    "small": TowerSizes(VisionSizes(256, 1024, 6, 4, 112, 14), TextSizes(256, 1024, 2, 4, 1, 64)),
    "base": TowerSizes(
        VisionSizes(1152, 4304, 27, 16, 224, 14), TextSizes(1024, 4096, 4, 8, 1, 128)
    ),
}


def build(
    preset: str,
) -> tuple[type[PaliGemmaForConditionalGeneration], PaliGemmaConfig, PaliGemmaProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    # The processor writes "<bos>" into the text itself, so the tokenizer adds nothing.
    tokenizer = build_tokenizer(
        **GEMMA_SPECIALS,
        named_tokens={"image_token": IMAGE_TOKEN},
    )
    # SigLIP squashes every image onto a square (no crop); the processor reads how many image
    # tokens to emit from `image_seq_length`, which the image processor saves and reloads.
    side = s.vision.image_size
    image_processor = SiglipImageProcessor(size={"height": side, "width": side})
    image_processor.image_seq_length = s.vision.grid**2
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vision = vision_config(SiglipVisionConfig, s.vision, vision_use_head=False)
    text = text_config(GemmaConfig, tokenizer, s.text, max_positions=8192)
    config = PaliGemmaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=processor.image_token_id,
        vocab_size=len(tokenizer),
        projection_dim=s.text.hidden,
        hidden_size=s.text.hidden,
    )
    return PaliGemmaForConditionalGeneration, config, processor
