"""DINOv2: a self-supervised ViT image encoder; no text side, no processor beyond the image one.

The sequence is a class token followed by the patches in raster order. The image processor
resizes the shortest edge and centre-crops a square (256 -> 224 in the real checkpoints), so the
patches always form a square grid; the position embeddings are learned for a larger grid
(``image_size``) and interpolated down to it, as in the released models.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import BitImageProcessor, Dinov2Config, Dinov2Model
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

RESIZE_PER_CROP = 256 / 224  # the released processors' shortest edge over their crop side


@dataclass(frozen=True)
class Dinov2Sizes:
    hidden: int
    layers: int
    heads: int
    patch_size: int
    crop_size: int  # the processor's square crop: (crop_size / patch_size) ** 2 patches
    image_size: int  # the position-embedding grid the model learned, in pixels


# base: the real facebook/dinov2-small (ViT-S/14, position grid 37x37, 224 px crops).
PRESETS: dict[str, Dinov2Sizes] = {
    "tiny": Dinov2Sizes(32, 2, 2, 8, 32, 48),
    "small": Dinov2Sizes(192, 6, 3, 14, 112, 224),
    "base": Dinov2Sizes(384, 12, 6, 14, 224, 518),
}


def build(preset: str) -> tuple[type[Dinov2Model], Dinov2Config, BitImageProcessor]:
    """Return the model class, its config and its image processor (DINOv2's whole processor)."""
    s = PRESETS[preset]
    processor = BitImageProcessor(
        size={"shortest_edge": round(s.crop_size * RESIZE_PER_CROP)},
        crop_size={"height": s.crop_size, "width": s.crop_size},
        do_center_crop=True,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
    )
    config = Dinov2Config(
        hidden_size=s.hidden,
        num_hidden_layers=s.layers,
        num_attention_heads=s.heads,
        mlp_ratio=4,
        patch_size=s.patch_size,
        image_size=s.image_size,
    )
    return Dinov2Model, config, processor
