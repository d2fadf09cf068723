"""SigLIP dual encoder: ViT image tower and bidirectional text tower, trained with a sigmoid loss.

Unlike CLIP the image tower has no class token: its pooled vector comes from ``vision_model.head``,
an attention-pooling head (a learned probe attending over every patch). The text tower pools its
last position, so SigLIP texts are meant to be padded to ``max_position_embeddings``. Both
towers' pooled vectors are compared directly, so the text head projects onto the image width.
"""

from __future__ import annotations

from transformers import (
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
    SiglipProcessor,
    SiglipTextConfig,
    SiglipVisionConfig,
)

from .blocks import TextSizes, TowerSizes, VisionSizes, text_config, vision_config
from .tokenizer import build_tokenizer

MAX_TEXT_POSITIONS = 64  # as in every google/siglip-* checkpoint


# base: the real image tower of google/siglip-base-patch16-224 with a 4-layer text tower.
PRESETS: dict[str, TowerSizes] = {
    "tiny": TowerSizes(VisionSizes(32, 128, 2, 2, 32, 8), TextSizes(32, 128, 2, 2)),
    "small": TowerSizes(VisionSizes(256, 1024, 6, 4, 112, 14), TextSizes(256, 1024, 4, 4)),
    "base": TowerSizes(VisionSizes(768, 3072, 12, 12, 224, 16), TextSizes(512, 2048, 4, 8)),
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
    side = s.vision.image_size
    processor = SiglipProcessor(
        image_processor=SiglipImageProcessor(size={"height": side, "width": side}),
        tokenizer=tokenizer,
    )
    text = text_config(
        SiglipTextConfig,
        tokenizer,
        s.text,
        max_positions=MAX_TEXT_POSITIONS,
        projection_size=s.vision.hidden,
        bos_token_id=None,
    )
    config = SiglipConfig(
        text_config=text, vision_config=vision_config(SiglipVisionConfig, s.vision)
    )
    return SiglipModel, config, processor
