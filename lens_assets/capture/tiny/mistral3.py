"""Mistral3 layout: Pixtral vision tower -> RMSNorm + spatial patch merger + MLP -> Mistral.

The tower is Pixtral's (aspect ratio kept, all images packed into one sequence); the projector
first folds each ``spatial_merge_size``-square of patches into one vector, so an image of
``h x w`` patches becomes ``(h / m) x (w / m)`` ``[IMG]`` tokens, laid out in rows closed by
``[IMG_BREAK]`` and ``[IMG_END]`` as in Pixtral. Images are sized to whole merged cells
(``patch_size * spatial_merge_size`` pixels), which the processor and config must agree on.
"""

from __future__ import annotations

from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralProcessor

from .blocks import TextSizes, TowerSizes, VisionSizes
from .pixtral import build_mistral_tokenizer, build_processor, model_fields

MERGE_SIZE = 2

# Parameters: tiny 0.15 M, small 6.4 M, base 457 M (the real 403 M Pixtral tower of
# Mistral-Small-3.1, 1540 px, patch 14; a 1024-wide 4-layer Mistral).
PRESETS: dict[str, TowerSizes] = {
    "tiny": TowerSizes(VisionSizes(32, 64, 2, 2, 64, 8), TextSizes(64, 128, 2, 4, 2, 16)),
    "small": TowerSizes(VisionSizes(256, 1024, 4, 4, 448, 14), TextSizes(256, 688, 2, 4, 2, 64)),
    "base": TowerSizes(
        VisionSizes(1024, 4096, 24, 16, 1540, 14), TextSizes(1024, 2816, 4, 8, 4, 128)
    ),
}


def build(
    preset: str,
) -> tuple[type[Mistral3ForConditionalGeneration], Mistral3Config, PixtralProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = build_mistral_tokenizer()
    processor = build_processor(
        tokenizer, s.vision.image_size, s.vision.patch_size, merge_size=MERGE_SIZE
    )
    config = Mistral3Config(
        **model_fields(s, tokenizer),
        image_token_index=processor.image_token_id,
        spatial_merge_size=MERGE_SIZE,
        projector_hidden_act="gelu",
        multimodal_projector_bias=False,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return Mistral3ForConditionalGeneration, config, processor
