"""PaliGemma layout: SigLIP vision tower (no class token) -> linear projector -> Gemma decoder.

Every patch becomes one image token, ``(image_size / patch_size) ** 2`` of them, placed before
``<bos>``. PaliGemma takes a plain prompt, no chat template: the processor turns
``"<image>caption en"`` into the image tokens, ``<bos>``, the prompt and a closing newline,
and marks the whole prefix with ``token_type_ids`` 0, over which the LLM attends
bidirectionally. The processor needs ``image_seq_length`` on the image processor, adds 1,152
``<locXXXX>``/``<segXXX>`` tokens to the tokenizer, and returns ``labels`` as well.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    GemmaConfig,
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    SiglipImageProcessor,
    SiglipVisionConfig,
)

from .tokenizer import build_tokenizer

IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class PaliGemmaSizes:
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    text_hidden: int
    text_layers: int
    text_heads: int
    text_head_dim: int


# Parameters (vocab ~1,460 with the location and segmentation tokens): tiny 0.24 M (1.2 MB on
# disk), small 7.3 M, base 475 M: the real SigLIP so400m/14-224 tower of
# google/paligemma-3b-mix-224 (412 M, 27 layers of 1152) with a 4-layer, 1024-wide Gemma (61 M,
# one key-value head as in Gemma-2B) in place of Gemma-2B.
PRESETS: dict[str, PaliGemmaSizes] = {
    "tiny": PaliGemmaSizes(32, 64, 2, 2, 32, 8, 64, 2, 4, 16),
    "small": PaliGemmaSizes(256, 1024, 6, 4, 112, 14, 256, 2, 4, 64),
    "base": PaliGemmaSizes(1152, 4304, 27, 16, 224, 14, 1024, 4, 8, 128),
}


def build(
    preset: str,
) -> tuple[type[PaliGemmaForConditionalGeneration], PaliGemmaConfig, PaliGemmaProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokens_per_image = (s.image_size // s.patch_size) ** 2
    # The processor writes "<bos>" into the text itself, so the tokenizer adds nothing.
    tokenizer = build_tokenizer(
        bos="<bos>",
        eos="<eos>",
        pad="<pad>",
        unk="<unk>",
        named_tokens={"image_token": IMAGE_TOKEN},
    )
    # SigLIP squashes every image onto a square (no crop); the processor reads how many image
    # tokens to emit from `image_seq_length`, which the image processor saves and reloads.
    image_processor = SiglipImageProcessor(size={"height": s.image_size, "width": s.image_size})
    image_processor.image_seq_length = tokens_per_image
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    vision = SiglipVisionConfig(
        hidden_size=s.vision_hidden,
        intermediate_size=s.vision_intermediate,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=s.image_size,
        patch_size=s.patch_size,
        vision_use_head=False,
    )
    text = GemmaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=4 * s.text_hidden,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        num_key_value_heads=1,
        head_dim=s.text_head_dim,
        max_position_embeddings=8192,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = PaliGemmaConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        image_token_index=processor.image_token_id,
        vocab_size=len(tokenizer),
        projection_dim=s.text_hidden,
        hidden_size=s.text_hidden,
    )
    return PaliGemmaForConditionalGeneration, config, processor
