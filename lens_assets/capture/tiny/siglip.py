"""SigLIP dual encoder: ViT image tower and bidirectional text tower, trained with a sigmoid loss.

Unlike CLIP the image tower has no class token: its pooled vector comes from ``vision_model.head``,
an attention-pooling head (a learned probe attending over every patch). The text tower pools its
last position, so SigLIP texts are meant to be padded to ``max_position_embeddings``. Both
towers' pooled vectors are compared directly, so the text head projects onto the image width.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import (
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
    SiglipTextConfig,
    SiglipVisionConfig,
)

from .tokenizer import build_tokenizer

MAX_TEXT_POSITIONS = 64  # as in every google/siglip-* checkpoint


@dataclass(frozen=True)
class SiglipSizes:
    vision_hidden: int
    vision_layers: int
    vision_heads: int
    image_size: int
    patch_size: int
    text_hidden: int
    text_layers: int
    text_heads: int


# base: the real image tower of google/siglip-base-patch16-224 with a 4-layer text tower.
PRESETS: dict[str, SiglipSizes] = {
    "tiny": SiglipSizes(32, 2, 2, 32, 8, 32, 2, 2),
    "small": SiglipSizes(256, 6, 4, 112, 14, 256, 4, 4),
    "base": SiglipSizes(768, 12, 12, 224, 16, 512, 4, 8),
}


def build(preset: str) -> tuple[type[SiglipModel], SiglipConfig, SiglipProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    # Like SigLIP's own tokenizer: no BOS, EOS appended to every text.
    tokenizer = build_tokenizer(
        eos="</s>",
        pad="<pad>",
        unk="<unk>",
        add_eos=True,
        model_max_length=MAX_TEXT_POSITIONS,
    )
    # SigLIP squashes every image onto a square (no crop), so the whole image is seen.
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessor(size={"height": s.image_size, "width": s.image_size}),
        tokenizer=tokenizer,
    )
    text = SiglipTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.text_hidden,
        intermediate_size=4 * s.text_hidden,
        num_hidden_layers=s.text_layers,
        num_attention_heads=s.text_heads,
        max_position_embeddings=MAX_TEXT_POSITIONS,
        projection_size=s.vision_hidden,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = SiglipVisionConfig(
        hidden_size=s.vision_hidden,
        intermediate_size=4 * s.vision_hidden,
        num_hidden_layers=s.vision_layers,
        num_attention_heads=s.vision_heads,
        image_size=s.image_size,
        patch_size=s.patch_size,
    )
    config = SiglipConfig(text_config=text, vision_config=vision)
    return SiglipModel, config, processor
