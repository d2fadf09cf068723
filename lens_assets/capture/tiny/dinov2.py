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

from .blocks import VisionSizes, vision_config

RESIZE_PER_CROP = 256 / 224  # the released processors' shortest edge over their crop side


@dataclass(frozen=True)
class Dinov2Sizes:
    # image_size: the position-embedding grid the model learned, in pixels; no intermediate
    # size (DINOv2 takes an mlp_ratio).
    vision: VisionSizes
    crop_size: int  # the processor's square crop: (crop_size / patch_size) ** 2 patches


# base: the real facebook/dinov2-small (ViT-S/14, position grid 37x37, 224 px crops).
PRESETS: dict[str, Dinov2Sizes] = {
    "tiny": Dinov2Sizes(VisionSizes(32, None, 2, 2, 48, 8), 32),
    "small": Dinov2Sizes(VisionSizes(192, None, 6, 3, 224, 14), 112),
    "base": Dinov2Sizes(VisionSizes(384, None, 12, 6, 518, 14), 224),
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
    return Dinov2Model, vision_config(Dinov2Config, s.vision, mlp_ratio=4), processor
