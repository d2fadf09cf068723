"""SmolVLM (SmolVLM2) layout: Idefics3's, with a SmolLM2 (Llama) decoder and a video slot.

Sub-images, the pixel-shuffle connector and the ``<row_i_col_j>``/``<global-img>`` markers work
exactly as in Idefics3 (see ``idefics3``); SmolVLM shuffles harder (``scale_factor`` 4 in the
real checkpoints). Its processor needs ``num2words`` (video frame captions) and a real video
processor, which needs torchvision. SmolVLM v1 checkpoints (``SmolVLM-256M-Instruct``) are
Idefics3 checkpoints; the ``smolvlm`` model type is SmolVLM2's.
"""

from __future__ import annotations

from transformers import (
    SmolVLMConfig,
    SmolVLMForConditionalGeneration,
    SmolVLMImageProcessor,
    SmolVLMProcessor,
    SmolVLMVideoProcessor,
    SmolVLMVisionConfig,
)

from .blocks import SIGLIP_NORM, TextSizes, VisionSizes
from .idefics3 import (
    CHAT_TEMPLATE,
    Idefics3Sizes,
    idefics_tokenizer,
    image_processor_kwargs,
    image_seq_len,
    model_config,
)

VIDEO_TOKEN = "<video>"

# Parameters: tiny 0.15 M (0.6 MB on disk), small 3.4 M, base 108 M (the real SigLIP
# base/16-512 tower of SmolVLM2-256M-Video-Instruct, 86 M in 12 layers, with a 4-layer, 576-wide
# SmolLM2).
PRESETS: dict[str, Idefics3Sizes] = {
    "tiny": Idefics3Sizes(VisionSizes(32, 64, 2, 2, 32, 8), 2, 96, TextSizes(64, 128, 2, 4, 2)),
    "small": Idefics3Sizes(
        VisionSizes(192, 768, 4, 3, 128, 16), 4, 256, TextSizes(192, 512, 2, 3, 1)
    ),
    "base": Idefics3Sizes(
        VisionSizes(768, 3072, 12, 12, 512, 16), 4, 4 * 512, TextSizes(576, 1536, 4, 9, 3)
    ),
}


def build(
    preset: str,
) -> tuple[type[SmolVLMForConditionalGeneration], SmolVLMConfig, SmolVLMProcessor]:
    """Return the model class, its config and a matching processor for ``preset``."""
    s = PRESETS[preset]
    tokenizer = idefics_tokenizer(
        bos="<|im_start|>", eos="<end_of_utterance>", pad="<|im_end|>", extra=(VIDEO_TOKEN,)
    )
    frames = {"longest_edge": s.vision.image_size}
    processor = SmolVLMProcessor(
        image_processor=SmolVLMImageProcessor(**image_processor_kwargs(s)),
        video_processor=SmolVLMVideoProcessor(
            size=frames, max_image_size=frames, image_mean=SIGLIP_NORM, image_std=SIGLIP_NORM
        ),
        tokenizer=tokenizer,
        image_seq_len=image_seq_len(s),
        chat_template=CHAT_TEMPLATE,
    )
    config = model_config(SmolVLMConfig, SmolVLMVisionConfig, s, processor)
    return SmolVLMForConditionalGeneration, config, processor
